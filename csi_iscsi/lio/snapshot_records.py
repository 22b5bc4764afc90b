"""The controller's snapshot records: one file per snapshot, beside the volume records.

Like the volume records they are values, written to disk before they replace the old value in
memory, and loaded once at start. A snapshot has no secret and no LIO object.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from pathlib import Path

from csi_iscsi.base.atomic import remove_durably, remove_stale_temps, write_json_atomic
from csi_iscsi.base.errors import Unavailable
from csi_iscsi.contract import is_snapshot_id
from csi_iscsi.lio.api import DELETING, SnapshotRecord

log = logging.getLogger(__name__)


class SnapshotStore:
    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        """readonly: for a reader beside the running controller (csi-iscsi doctor), as RecordStore's."""
        self._dir = state_dir / "snapshots"
        self._lock = threading.Lock()
        if not readonly:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            remove_stale_temps(self._dir)
        self._records: dict[str, SnapshotRecord] = {}
        self.unreadable: set[str] = set()
        for path in self._dir.glob("snap-*.json"):
            snapshot_id = path.stem
            if not is_snapshot_id(snapshot_id):
                continue
            try:
                record = SnapshotRecord.from_json(json.loads(path.read_text()))
                if record.snapshot_id != snapshot_id:
                    raise ValueError(f"it names snapshot {record.snapshot_id}")
            except Exception as exc:  # one bad file must not stop the controller
                log.error("snapshot record %s is unreadable (%s: %s); calls on that snapshot, and ListSnapshots, "
                          "fail until a person repairs it", path, type(exc).__name__, exc)
                self.unreadable.add(snapshot_id)
                continue
            self._records[snapshot_id] = record
        self._ids = sorted(self._records)

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        if snapshot_id in self.unreadable:
            raise Unavailable(f"the record of snapshot {snapshot_id} ({self._dir / snapshot_id}.json) is unreadable; "
                              "repair it, then restart the controller")
        with self._lock:
            return self._records.get(snapshot_id)

    def all(self) -> list[SnapshotRecord]:
        with self._lock:
            return [self._records[i] for i in self._ids]

    def of_volume(self, volume_id: str) -> list[SnapshotRecord]:
        with self._lock:
            return [r for r in self._records.values() if r.source_volume_id == volume_id]

    def sizes(self, pool: str) -> dict[str, int]:
        """snapshot id -> size, of every snapshot in the pool (whatever its state)."""
        with self._lock:
            return {r.snapshot_id: r.size_bytes for r in self._records.values() if r.pool == pool}

    def page(self, start_after: str, limit: int, source_volume_id: str = "") -> tuple[list[SnapshotRecord], str]:
        """Snapshots with ids > start_after (being deleted ones left out), and the next token."""
        if self.unreadable:
            raise Unavailable(f"snapshot records {sorted(self.unreadable)[:3]} are unreadable; ListSnapshots would "
                              "be incomplete (see the controller's log)")
        with self._lock:
            index = bisect.bisect_right(self._ids, start_after) if start_after else 0
            out: list[SnapshotRecord] = []
            while index < len(self._ids) and (limit <= 0 or len(out) < limit):
                record = self._records[self._ids[index]]
                if record.state != DELETING and source_volume_id in ("", record.source_volume_id):
                    out.append(record)
                index += 1
            more = index < len(self._ids)
            return out, (out[-1].snapshot_id if out and more else "")

    def put(self, record: SnapshotRecord) -> None:
        """Disk first; memory takes the new value only once it is durable."""
        with self._lock:
            write_json_atomic(self._dir / f"{record.snapshot_id}.json", record.to_json())
            if record.snapshot_id not in self._records:
                bisect.insort(self._ids, record.snapshot_id)
            self._records[record.snapshot_id] = record

    def remove(self, snapshot_id: str) -> None:
        with self._lock:
            remove_durably(self._dir / f"{snapshot_id}.json")
            if self._records.pop(snapshot_id, None) is not None:
                self._ids.remove(snapshot_id)
