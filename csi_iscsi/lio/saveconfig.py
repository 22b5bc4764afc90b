"""The saved LIO configuration, kept by us and rewritten per change.

rtslib's own save dumps the whole configfs tree every time (cost grows with the number of
volumes) and Debian's copy is not atomic. We keep the document in memory, each entry with its
serialized text, re-encode only the entries a call changed (from their own dump(), or just one
ACL spliced into its target), and write the file atomically (temp + fsync + rename + fsync of the
directory, 0600: it holds CHAP secrets) in the format `targetctl restore` reads at boot. Entries
we do not own (targets an admin made by hand) are kept as they are.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from csi_iscsi.base.atomic import remove_stale_temps, write_atomic

DEBIAN_SAVE_FILE = Path("/etc/rtslib-fb-target/saveconfig.json")


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class SavedConfig:
    def __init__(self, path: Path = DEBIAN_SAVE_FILE) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path.parent.is_dir():
            remove_stale_temps(path.parent, path.name)
        doc: dict[str, Any] = {}
        if path.exists():
            doc = json.loads(path.read_text() or "{}")
        self._storage_objects = {so["name"]: so for so in doc.get("storage_objects", []) if "name" in so}
        self._targets = {t["wwn"]: t for t in doc.get("targets", []) if "wwn" in t}
        self._so_text = {k: _encode(v) for k, v in self._storage_objects.items()}
        self._target_text = {k: _encode(v) for k, v in self._targets.items()}
        self._fabric_text = _encode(doc.get("fabric_modules", []))

    def storage_object(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._storage_objects.get(name)

    def target(self, wwn: str) -> dict[str, Any] | None:
        with self._lock:
            return self._targets.get(wwn)

    def may_hold_acl(self, wwn: str, initiator: str) -> bool:
        """False only when the saved target is known not to hold an ACL for initiator."""
        with self._lock:
            target = self._targets.get(wwn)
            if target is None:
                return False
            if len(target.get("tpgs", [])) != 1:
                return True  # not a shape this module splices: assume it might
            return any(a.get("node_wwn") == initiator for a in target["tpgs"][0].get("node_acls", []))

    def update(self, *, storage_objects: dict[str, dict[str, Any] | None] | None = None,
               targets: dict[str, dict[str, Any] | None] | None = None) -> None:
        """Replace (dict) or drop (None) the named entries and write the document durably; the new
        entries take the old ones' place in memory only once the file holds them."""
        with self._lock:
            sos, so_text = dict(self._storage_objects), dict(self._so_text)
            tgts, tgt_text = dict(self._targets), dict(self._target_text)
            for name, so in (storage_objects or {}).items():
                self._set(sos, so_text, name, so)
            for wwn, target in (targets or {}).items():
                self._set(tgts, tgt_text, wwn, target)
            self._write(so_text, tgt_text)
            self._storage_objects, self._so_text, self._targets, self._target_text = sos, so_text, tgts, tgt_text

    def update_acl(self, wwn: str, initiator: str, acl: dict[str, Any] | None) -> bool:
        """Replace or drop one ACL inside a saved target; False if the target is not saved yet."""
        with self._lock:
            target = self._targets.get(wwn)
            if target is None or len(target.get("tpgs", [])) != 1:
                return False
            tpg = dict(target["tpgs"][0])
            acls = [a for a in tpg.get("node_acls", []) if a.get("node_wwn") != initiator]
            if acl is not None:
                acls.append(acl)
            tpg["node_acls"] = sorted(acls, key=lambda a: str(a.get("node_wwn")))
            new_target = {**target, "tpgs": [tpg]}
            tgts, tgt_text = dict(self._targets), dict(self._target_text)
            tgts[wwn], tgt_text[wwn] = new_target, _encode(new_target)
            self._write(self._so_text, tgt_text)
            self._targets, self._target_text = tgts, tgt_text
            return True

    @staticmethod
    def _set(values: dict[str, dict[str, Any]], texts: dict[str, str], key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            values.pop(key, None)
            texts.pop(key, None)
        else:
            values[key] = value
            texts[key] = _encode(value)

    def _write(self, so_text: dict[str, str], target_text: dict[str, str]) -> None:
        text = "".join([
            '{"fabric_modules":', self._fabric_text,
            ',"storage_objects":[', ",".join(so_text[k] for k in sorted(so_text)),
            '],"targets":[', ",".join(target_text[k] for k in sorted(target_text)), "]}\n",
        ])
        write_atomic(self.path, text.encode(), 0o600)
