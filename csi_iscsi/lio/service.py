"""LIO-backed volumes on this node: pools + LIO objects + our records + the saved LIO config.

Order of every change, so a crash at any point is finished or undone by a retry and a restart
loses nothing: record first (state creating/deleting), then the pool and LIO, then the saved LIO
config, then the record's final state. An RPC returns OK only after the saved config holds the
change (an ACL removed but not saved would come back at the next boot and re-open a fenced node).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prometheus_client import Gauge

from csi_iscsi import contract
from csi_iscsi.base.errors import FailedPrecondition, NotFound, ResourceExhausted
from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId
from csi_iscsi.lio.api import CREATING, DELETING, READY, Grant, PoolInfo, VolumeRecord, VolumeSpec
from csi_iscsi.lio.objects import CONFIGFS, Lio
from csi_iscsi.lio.pools import Accounting, Pool
from csi_iscsi.lio.records import RecordStore
from csi_iscsi.lio.saveconfig import SavedConfig

log = logging.getLogger(__name__)

DRIFT = Gauge("csi_iscsi_lio_drift", "Differences between the controller's records and live LIO at start-up")


class LioTargetService:
    def __init__(self, pools: dict[str, Pool], portals: list[str], state_dir: Path, saved: SavedConfig,
                 iqn_prefix: str = contract.DEFAULT_TARGET_IQN_PREFIX, lio: Lio | None = None) -> None:
        if not pools:
            raise FailedPrecondition("the controller needs at least one pool")
        self._pools = pools
        self._default = next(iter(pools))
        self.portals = portals
        self._prefix = iqn_prefix
        self._records = RecordStore(state_dir)
        self._saved = saved
        self._lio = lio or Lio()
        self._lio_lock = threading.Lock()  # configfs has no locking of its own
        self._capacity_lock = threading.Lock()
        self._accounting = Accounting()
        for record in self._records.all():
            self._accounting.add(record.pool, record.capacity_bytes)

    # Queries -------------------------------------------------------------------------------------

    def pools(self) -> dict[str, PoolInfo]:
        return {name: PoolInfo(name, p.kind, p.online_expansion) for name, p in self._pools.items()}

    def default_pool(self) -> str:
        return self._default

    def target_iqn(self, volume_id: str) -> str:
        return contract.target_iqn(volume_id, self._prefix)

    def get(self, volume_id: str) -> VolumeRecord | None:
        return self._records.get(volume_id)

    def page(self, start_after: str, limit: int) -> tuple[list[VolumeRecord], str]:
        return self._records.page(start_after, limit)

    def available_bytes(self, pool: str) -> int:
        return max(0, self._pools[pool].total_bytes() - self._accounting.provisioned(pool))

    def ready(self) -> tuple[bool, str]:
        if not CONFIGFS.is_dir():
            return False, f"{CONFIGFS} is missing: configfs not mounted or target_core_mod not loaded"
        for pool in self._pools.values():
            try:
                pool.total_bytes()
            except Exception as exc:
                return False, f"pool {pool.name} is not usable: {exc}"
        return True, "ready"

    # Changes -------------------------------------------------------------------------------------

    def _save(self, volume_id: str) -> None:
        iqn = self.target_iqn(volume_id)
        with self._lio_lock:
            so_dump, target_dump = self._lio.dump(volume_id, iqn)
        self._saved.update(storage_objects={volume_id: so_dump}, targets={iqn: target_dump})

    def _save_acl(self, volume_id: str, initiator: str) -> None:
        """Save one ACL change; cheaper than a whole-volume dump (an rtslib dump reads ~100 files)."""
        iqn = self.target_iqn(volume_id)
        with self._lio_lock:
            acl = self._lio.dump_acl(iqn, initiator)
        if not self._saved.update_acl(iqn, initiator, acl):
            self._save(volume_id)

    def _export(self, record: VolumeRecord, fresh: bool = False) -> None:
        pool = self._pools[record.pool]
        backing = pool.allocate(record.volume_id, record.capacity_bytes)
        serial = contract.unit_serial(record.volume_id)
        with self._lio_lock:
            if backing.backstore == "fileio":
                self._lio.ensure_fileio(record.volume_id, backing.path, record.capacity_bytes, serial, fresh)
            else:
                self._lio.ensure_block(record.volume_id, backing.path, serial, fresh)
            self._lio.ensure_target(self.target_iqn(record.volume_id), self.portals, record.volume_id,
                                    chap=record.authentication != "none")

    def create(self, spec: VolumeSpec) -> VolumeRecord:
        record = self._records.get(spec.volume_id)
        fresh = record is None
        if record is None:
            with self._capacity_lock:
                available = self.available_bytes(spec.pool)
                if spec.capacity_bytes > available:
                    raise ResourceExhausted(
                        f"pool {spec.pool} has {available} bytes left, {spec.capacity_bytes} requested")
                record = VolumeRecord(
                    volume_id=spec.volume_id, name=spec.name, pool=spec.pool, capacity_bytes=spec.capacity_bytes,
                    access_type=spec.access_type, access_modes=list(spec.access_modes),
                    parameters=dict(spec.parameters), authentication=spec.authentication, state=CREATING)
                self._records.put(record)
                self._accounting.add(spec.pool, spec.capacity_bytes)
        elif record.state == READY:
            return record
        elif record.state == DELETING:
            raise FailedPrecondition(f"volume {spec.volume_id} is being deleted; retry after DeleteVolume ends")
        # A new volume, or one a crash left half made: every step below is an idempotent "ensure".
        self._export(record, fresh=fresh)
        self._save(record.volume_id)
        record.state = READY
        self._records.put(record)
        return record

    def delete(self, volume_id: str) -> None:
        record = self._records.get(volume_id)
        if record is None:
            return
        if record.grants:
            raise FailedPrecondition(f"volume {volume_id} is still published to {sorted(record.grants)}; "
                                     "ControllerUnpublishVolume it first")
        record.state = DELETING
        self._records.put(record)
        iqn = self.target_iqn(volume_id)
        with self._lio_lock:
            self._lio.delete_storage_object(volume_id, iqn)
            self._lio.delete_target(iqn)
        self._saved.update(storage_objects={volume_id: None}, targets={iqn: None})
        self._pools[record.pool].release(volume_id)
        self._records.remove(volume_id)
        self._accounting.add(record.pool, -record.capacity_bytes)

    def publish(self, volume_id: str, node: NodeId, readonly: bool, chap: Chap | None) -> VolumeRecord:
        record = self._ready(volume_id)
        self._records.claim_initiator(node, volume_id)
        with self._lio_lock:
            self._lio.grant(self.target_iqn(volume_id), node.initiator_iqn, readonly=readonly, chap=chap)
        self._save_acl(volume_id, node.initiator_iqn)
        record.grants[str(node)] = Grant(readonly=readonly)
        self._records.put(record)
        return record

    def unpublish(self, volume_id: str, node: NodeId) -> None:
        record = self._records.get(volume_id)
        if record is None or str(node) not in record.grants:
            return
        with self._lio_lock:
            self._lio.revoke(self.target_iqn(volume_id), node.initiator_iqn)
        self._save_acl(volume_id, node.initiator_iqn)
        del record.grants[str(node)]
        self._records.put(record)
        self._records.release_initiator(node, volume_id)

    def expand(self, volume_id: str, capacity_bytes: int) -> VolumeRecord:
        record = self._ready(volume_id)
        if capacity_bytes <= record.capacity_bytes:
            return record
        pool = self._pools[record.pool]
        if record.grants and not pool.online_expansion:
            raise FailedPrecondition(
                f"volume {volume_id} is published and {pool.kind} pool {pool.name} grows volumes offline only "
                "(LIO fixes a fileio object's size); unpublish it, or use an lvm-thin pool for online growth")
        delta = capacity_bytes - record.capacity_bytes
        with self._capacity_lock:
            available = self.available_bytes(record.pool)
            if delta > available:
                raise ResourceExhausted(f"pool {record.pool} has {available} bytes left, {delta} more requested")
            self._accounting.add(record.pool, delta)
        try:
            pool.grow(volume_id, capacity_bytes)
            if not pool.online_expansion:
                # Recreate the fileio object over the grown file, same name and unit serial.
                with self._lio_lock:
                    self._lio.delete_storage_object(volume_id, self.target_iqn(volume_id))
                record.capacity_bytes = capacity_bytes
                self._export(record)
                self._save(volume_id)
        except Exception:
            self._accounting.add(record.pool, -delta)
            raise
        record.capacity_bytes = capacity_bytes
        self._records.put(record)
        return record

    def _ready(self, volume_id: str) -> VolumeRecord:
        record = self._records.get(volume_id)
        if record is None or record.state != READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return record

    # Start-up ------------------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Restore what live LIO lacks from the saved config, and report every difference."""
        drift: list[str] = []
        known = set()
        for record in self._records.all():
            iqn = self.target_iqn(record.volume_id)
            known.add(iqn)
            if record.state != READY:
                drift.append(f"volume {record.volume_id} ({record.name}) was left {record.state} by a crash; "
                             "a retried CreateVolume/DeleteVolume finishes it")
                continue
            with self._lio_lock:
                so_ok = self._lio.storage_object_exists(record.volume_id, iqn)
                target_ok = self._lio.target_exists(iqn)
            if not (so_ok and target_ok):
                drift.append(f"volume {record.volume_id}: LIO lacked its "
                             f"{'storage object' if not so_ok else 'target'}; restoring")
                self._restore(record, so_ok, target_ok)
                continue
            with self._lio_lock:
                live = set(self._lio.initiators(iqn))
            granted = {n.initiator_iqn for n in map(NodeId.parse, record.grants) if n}
            for extra in sorted(live - granted):
                drift.append(f"volume {record.volume_id}: LIO has an ACL for {extra} that no publish recorded")
            for missing in sorted(granted - live):
                drift.append(f"volume {record.volume_id}: ACL for {missing} is missing in LIO")
        with self._lio_lock:
            live_targets = self._lio.target_iqns(self._prefix + ":")
        for iqn in live_targets:
            if iqn not in known:
                drift.append(f"target {iqn} exists in LIO but no volume record names it (left alone)")
        for line in drift:
            log.warning("reconcile: %s", line)
        DRIFT.set(len(drift))
        return drift

    def _restore(self, record: VolumeRecord, so_ok: bool, target_ok: bool) -> None:
        iqn = self.target_iqn(record.volume_id)
        so_dump = None if so_ok else self._saved.storage_object(record.volume_id)
        target_dump = None if target_ok else self._saved.target(iqn)
        with self._lio_lock:
            if so_dump or target_dump:
                for error in self._lio.restore(so_dump, target_dump):
                    log.warning("reconcile: restoring %s: %s", record.volume_id, error)
        if not self._pools[record.pool].exists(record.volume_id):
            log.error("reconcile: the data of volume %s is missing from pool %s", record.volume_id, record.pool)
            return
        # Whatever the saved config could not give back is rebuilt from our record (ACLs without secrets).
        self._export(record)
        with self._lio_lock:
            for node_id, grant in record.grants.items():
                node = NodeId.parse(node_id)
                if node and node.initiator_iqn not in self._lio.initiators(iqn):
                    if record.authentication != "none":
                        log.error("reconcile: cannot restore the CHAP ACL of %s on %s without its secret",
                                  node_id, record.volume_id)
                        continue
                    self._lio.grant(iqn, node.initiator_iqn, readonly=grant.readonly)
        self._save(record.volume_id)
