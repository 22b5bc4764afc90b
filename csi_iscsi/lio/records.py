"""The controller's own durable records: one file per volume, and who holds each initiator IQN.

No secrets are kept here (CHAP credentials live only in the LIO config). Everything is loaded
once at start into memory, so calls never list the directory or walk configfs.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from pathlib import Path
from typing import Any

from csi_iscsi.base.atomic import remove_durably, write_atomic, write_json_atomic
from csi_iscsi.base.errors import FailedPrecondition
from csi_iscsi.contract import NodeId, is_volume_id
from csi_iscsi.lio.api import READY, VolumeRecord

log = logging.getLogger(__name__)

class RecordStore:
    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "volumes"
        self._initiators_file = state_dir / "initiators.json"
        self._lock = threading.Lock()
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._records: dict[str, VolumeRecord] = {}
        self._ids: list[str] = []  # sorted, for pagination
        for path in self._dir.glob("csi-*.json"):
            volume_id = path.stem
            if not is_volume_id(volume_id):
                continue
            try:
                self._records[volume_id] = VolumeRecord.from_json(json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                log.error("volume record %s is unreadable (%s); leaving it for a person to look at", path, exc)
        self._ids = sorted(self._records)
        # initiator IQN -> {"node": node name, "volumes": [volume ids]}
        self._initiators: dict[str, dict[str, Any]] = {}
        if self._initiators_file.exists():
            self._initiators = json.loads(self._initiators_file.read_text())

    def get(self, volume_id: str) -> VolumeRecord | None:
        with self._lock:
            return self._records.get(volume_id)

    def all(self) -> list[VolumeRecord]:
        with self._lock:
            return [self._records[i] for i in self._ids]

    def page(self, start_after: str, limit: int) -> tuple[list[VolumeRecord], str]:
        """Records with ids > start_after (ready ones only), and the token for the next page."""
        with self._lock:
            index = bisect.bisect_right(self._ids, start_after) if start_after else 0
            out: list[VolumeRecord] = []
            while index < len(self._ids) and (limit <= 0 or len(out) < limit):
                record = self._records[self._ids[index]]
                if record.state == READY:
                    out.append(record)
                index += 1
            more = index < len(self._ids)
            return out, (out[-1].volume_id if out and more else "")

    def put(self, record: VolumeRecord) -> None:
        write_json_atomic(self._dir / f"{record.volume_id}.json", record.to_json())
        with self._lock:
            if record.volume_id not in self._records:
                bisect.insort(self._ids, record.volume_id)
            self._records[record.volume_id] = record

    def remove(self, volume_id: str) -> None:
        remove_durably(self._dir / f"{volume_id}.json")
        with self._lock:
            if self._records.pop(volume_id, None) is not None:
                self._ids.remove(volume_id)

    # Initiator claims: LIO fences by IQN, so one IQN may belong to one node name only.

    def claim_initiator(self, node: NodeId, volume_id: str) -> None:
        with self._lock:
            entry = self._initiators.get(node.initiator_iqn)
            if entry and entry["node"] != node.node_name and entry["volumes"]:
                raise FailedPrecondition(
                    f"initiator {node.initiator_iqn} is already granted to node {entry['node']!r}; node "
                    f"{node.node_name!r} reports the same IQN (cloned nodes?). LIO fences by IQN, so the two "
                    "cannot be kept apart: give each node its own /etc/iscsi/initiatorname.iscsi")
            if not entry or entry["node"] != node.node_name:
                entry = {"node": node.node_name, "volumes": []}
            if volume_id not in entry["volumes"]:
                entry["volumes"] = sorted([*entry["volumes"], volume_id])
            self._initiators[node.initiator_iqn] = entry
            self._write_initiators()

    def _write_initiators(self) -> None:
        write_atomic(self._initiators_file, json.dumps(self._initiators, separators=(",", ":")).encode())

    def release_initiator(self, node: NodeId, volume_id: str) -> None:
        with self._lock:
            entry = self._initiators.get(node.initiator_iqn)
            if not entry or entry["node"] != node.node_name or volume_id not in entry["volumes"]:
                return
            entry["volumes"].remove(volume_id)
            if not entry["volumes"]:
                del self._initiators[node.initiator_iqn]
            self._write_initiators()
