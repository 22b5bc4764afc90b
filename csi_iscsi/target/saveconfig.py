"""The saved LIO configuration, kept by us and rewritten per change.

rtslib's own save dumps the whole configfs tree every time (cost grows with the number of
volumes) and Debian's copy is not atomic. We keep the document in memory, replace only the
entries of the objects a call changed (from their own dump()), and write it atomically (temp +
fsync + rename + fsync of the directory, 0600: it holds CHAP secrets) in the format
`targetctl restore` reads at boot. Entries we do not own (other targets an admin made) are kept.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from csi_iscsi.atomic import write_atomic

DEBIAN_SAVE_FILE = Path("/etc/rtslib-fb-target/saveconfig.json")


class SavedConfig:
    def __init__(self, path: Path = DEBIAN_SAVE_FILE) -> None:
        self.path = path
        self._lock = threading.Lock()
        doc: dict[str, Any] = {}
        if path.exists():
            doc = json.loads(path.read_text() or "{}")
        self._storage_objects: dict[str, dict[str, Any]] = {
            so["name"]: so for so in doc.get("storage_objects", []) if "name" in so}
        self._targets: dict[str, dict[str, Any]] = {t["wwn"]: t for t in doc.get("targets", []) if "wwn" in t}
        self._fabric_modules: list[Any] = doc.get("fabric_modules", [])

    def storage_object(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._storage_objects.get(name)

    def target(self, wwn: str) -> dict[str, Any] | None:
        with self._lock:
            return self._targets.get(wwn)

    def target_names(self) -> list[str]:
        with self._lock:
            return sorted(self._targets)

    def update(self, *, storage_objects: dict[str, dict[str, Any] | None] | None = None,
               targets: dict[str, dict[str, Any] | None] | None = None) -> None:
        """Replace (dict) or drop (None) the named entries, then write the document durably."""
        with self._lock:
            for name, so in (storage_objects or {}).items():
                if so is None:
                    self._storage_objects.pop(name, None)
                else:
                    self._storage_objects[name] = so
            for wwn, target in (targets or {}).items():
                if target is None:
                    self._targets.pop(wwn, None)
                else:
                    self._targets[wwn] = target
            doc = {
                "fabric_modules": self._fabric_modules,
                "storage_objects": [self._storage_objects[k] for k in sorted(self._storage_objects)],
                "targets": [self._targets[k] for k in sorted(self._targets)],
            }
            write_atomic(self.path, (json.dumps(doc, separators=(",", ":")) + "\n").encode(), 0o600)
