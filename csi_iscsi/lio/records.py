"""The controller's own durable records: one file per volume, no secrets (CHAP credentials live
only in the LIO config).

Records are values (csi_iscsi.lio.api.VolumeRecord). `put` writes the new value to disk first and
only then swaps it in: when the write fails, memory still holds what disk holds. Everything is
loaded once at start, so calls never list the directory or walk configfs. Which node holds an
initiator IQN, and how much each pool has provisioned, are derived from the records themselves
(no second file that could drift from them).
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from csi_iscsi.base.atomic import remove_durably, remove_stale_temps, write_json_atomic
from csi_iscsi.base.errors import Unavailable
from csi_iscsi.contract import NodeId, is_volume_id
from csi_iscsi.lio.api import READY, VolumeRecord

log = logging.getLogger(__name__)

# Kept by versions before 0.2: claims written apart from the grants, which could leak. Claims are
# now derived from the grants; the old file is removed at start.
LEGACY_INITIATORS_FILE = "initiators.json"


class RecordStore:
    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        """readonly: for a reader beside the running controller (csi-iscsi status): it creates and
        removes nothing, since temp files may be the controller's writes in flight."""
        self._dir = state_dir / "volumes"
        self._lock = threading.Lock()
        if not readonly:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            remove_stale_temps(self._dir)
        self._records: dict[str, VolumeRecord] = {}
        self.unreadable: set[str] = set()
        for path in self._dir.glob("csi-*.json"):
            volume_id = path.stem
            if not is_volume_id(volume_id):
                continue
            try:
                record = VolumeRecord.from_json(json.loads(path.read_text()))
                if record.volume_id != volume_id:
                    raise ValueError(f"it names volume {record.volume_id}")
            except Exception as exc:  # one bad file must not stop the controller (no fencing without it)
                log.error("volume record %s is unreadable (%s: %s); calls on that volume, and ListVolumes, fail "
                          "until a person repairs it", path, type(exc).__name__, exc)
                self.unreadable.add(volume_id)
                continue
            # Node ids written before IQNs were kept lowercase (as LIO keeps them) are read in that form.
            grants = {str(n) if (n := NodeId.parse(k)) else k: g for k, g in record.grants.items()}
            self._records[volume_id] = replace(record, grants=grants) if grants != record.grants else record
        self._ids = sorted(self._records)  # for pagination
        # initiator IQN -> node name -> volume ids granted to it
        self._holders: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for record in self._records.values():
            self._index(record, +1)
        legacy = state_dir / LEGACY_INITIATORS_FILE
        if not readonly and legacy.exists():
            log.info("removing %s: initiator claims are derived from the volume records now", legacy)
            remove_durably(legacy)

    def _index(self, record: VolumeRecord, sign: int) -> None:
        for node_id in record.grants:
            node = NodeId.parse(node_id)
            if node is None:
                continue
            volumes = self._holders[node.initiator_iqn][node.node_name]
            if sign > 0:
                volumes.add(record.volume_id)
            else:
                volumes.discard(record.volume_id)
                if not volumes:
                    del self._holders[node.initiator_iqn][node.node_name]
                if not self._holders[node.initiator_iqn]:
                    del self._holders[node.initiator_iqn]

    def get(self, volume_id: str) -> VolumeRecord | None:
        """The record, None if there is none; an unreadable one is an error, never "no such volume"
        (DeleteVolume would answer OK and leave the volume exported)."""
        if volume_id in self.unreadable:
            raise Unavailable(f"the record of volume {volume_id} ({self._dir / volume_id}.json) is unreadable; repair "
                              "it (docs/troubleshooting.md), then restart the controller. Do not just delete it: "
                              "the volume's LIO objects and data would be left unmanaged")
        with self._lock:
            return self._records.get(volume_id)

    def all(self) -> list[VolumeRecord]:
        with self._lock:
            return [self._records[i] for i in self._ids]

    def page(self, start_after: str, limit: int) -> tuple[list[VolumeRecord], str]:
        """Records with ids > start_after (ready ones only), and the token for the next page. With a
        record unreadable the listing would be incomplete, and the attacher would take the missing
        volumes for detached: an error instead."""
        if self.unreadable:
            raise Unavailable(f"volume records {sorted(self.unreadable)[:3]} are unreadable; ListVolumes would be "
                              "incomplete (see the controller's log)")
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

    def capacities(self, pool: str) -> dict[str, int]:
        """volume id -> provisioned bytes of every volume in pool (whatever its state)."""
        with self._lock:
            return {r.volume_id: r.capacity_bytes for r in self._records.values() if r.pool == pool}

    def made_from_sources(self, pool: str) -> set[str]:
        """Ids of the pool's volumes made from a snapshot or a volume."""
        with self._lock:
            return {r.volume_id for r in self._records.values() if r.pool == pool and r.content_source}

    def holders(self, initiator_iqn: str) -> dict[str, set[str]]:
        """node name -> volume ids, for every node a record grants this initiator IQN to."""
        with self._lock:
            return {name: set(ids) for name, ids in self._holders.get(initiator_iqn, {}).items()}

    def put(self, record: VolumeRecord) -> None:
        """Disk first; memory takes the new value only once it is durable."""
        with self._lock:
            write_json_atomic(self._dir / f"{record.volume_id}.json", record.to_json())
            old = self._records.get(record.volume_id)
            if old is None:
                bisect.insort(self._ids, record.volume_id)
            else:
                self._index(old, -1)
            self._records[record.volume_id] = record
            self._index(record, +1)

    def remove(self, volume_id: str) -> None:
        with self._lock:
            remove_durably(self._dir / f"{volume_id}.json")
            old = self._records.pop(volume_id, None)
            if old is not None:
                self._ids.remove(volume_id)
                self._index(old, -1)
