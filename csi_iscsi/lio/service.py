"""LIO-backed volumes on this node: pools + LIO objects + our records + the saved LIO config.

Every change runs as a transaction over values (records are immutable; a new one is written to
disk before it replaces the old in memory):
- create: record (creating) → pool → LIO → saved config → record (ready). A failing create undoes
  itself (the CO never learnt of the volume); a crash is finished by the retry.
- delete: record (deleting) → LIO → saved config → pool → record gone. A failure is finished by
  the retry, which the CO makes until it succeeds.
- publish: record with the grant (intent first, so the claim on the initiator IQN is durable
  before LIO lets it in) → LIO ACL → saved config. A failing publish that added the grant takes it
  back.
- unpublish: LIO ACLs of the initiator, whatever the record says → saved config → record.
- expand: pool → (fileio: LIO object recreated → saved config) → record.
An RPC returns OK only after the saved config holds the change (an ACL removed but not saved
would come back at the next boot and re-open a fenced node). Fault points (csi_iscsi.base.faults)
sit between the steps; docs/failure-modes.md says what each leaves and what converges it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from prometheus_client import Gauge

from csi_iscsi import contract
from csi_iscsi.base.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from csi_iscsi.base.faults import fault_point
from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId
from csi_iscsi.lio.api import CREATING, DELETING, READY, Grant, PoolInfo, VolumeRecord, VolumeSpec
from csi_iscsi.lio.objects import CONFIGFS, Lio
from csi_iscsi.lio.pools import Backing, FileioPool, Pool, Reservations
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
        self._claims_lock = threading.Lock()
        self._reserved = Reservations()
        self._share_filesystems()

    def _share_filesystems(self) -> None:
        """fileio pools on one filesystem promise the same free bytes: each counts the others' claims."""
        fileio = [p for p in self._pools.values() if isinstance(p, FileioPool)]
        for pool in fileio:
            pool.siblings = [p for p in fileio if p is not pool and p.filesystem() == pool.filesystem()]
            if pool.siblings:
                log.warning("fileio pools %s share one filesystem; each counts the others' volumes against its free "
                            "space", sorted([pool.name, *(p.name for p in pool.siblings)]))
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
        target = self._pools[pool]
        sharing = [pool, *(p.name for p in target.siblings)] if isinstance(target, FileioPool) else [pool]
        provisioned: dict[str, int] = {}
        for name in sharing:
            provisioned.update(self._records.capacities(name))
        free = target.available_bytes(provisioned)
        return max(0, free - sum(self._reserved.held(name) for name in sharing))

    def ready(self) -> tuple[bool, str]:
        if not CONFIGFS.is_dir():
            return False, f"{CONFIGFS} is missing: configfs not mounted or target_core_mod not loaded"
        for pool in self._pools.values():
            try:
                pool.check()
            except Exception as exc:
                return False, f"pool {pool.name} is not usable: {exc}"
        return True, "ready"

    # Steps ---------------------------------------------------------------------------------------

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
        if acl is None and not self._saved.may_hold_acl(iqn, initiator):
            return  # neither live nor saved: nothing to write
        if not self._saved.update_acl(iqn, initiator, acl):
            self._save(volume_id)

    def _export(self, record: VolumeRecord, fresh: bool = False) -> None:
        self._export_lio(record, self._pools[record.pool].allocate(record.volume_id, record.capacity_bytes), fresh)

    def _export_lio(self, record: VolumeRecord, backing: Backing, fresh: bool = False) -> None:
        serial = contract.unit_serial(record.volume_id)
        with self._lio_lock:
            if backing.backstore == "fileio":
                self._lio.ensure_fileio(record.volume_id, backing.path, record.capacity_bytes, serial, fresh)
            else:
                self._lio.ensure_block(record.volume_id, backing.path, serial, fresh)
            self._lio.ensure_target(self.target_iqn(record.volume_id), self.portals, record.volume_id,
                                    chap=record.authentication != "none")

    def _unexport(self, volume_id: str) -> None:
        iqn = self.target_iqn(volume_id)
        with self._lio_lock:
            self._lio.delete_storage_object(volume_id, iqn)
            self._lio.delete_target(iqn)

    # Create and delete ---------------------------------------------------------------------------

    def create(self, spec: VolumeSpec) -> VolumeRecord:
        record = self._records.get(spec.volume_id)
        with self._lio_lock:
            fresh = record is None and not self._lio.target_exists(self.target_iqn(spec.volume_id))
        if record is None:
            with self._capacity_lock:
                available = self.available_bytes(spec.pool)
                if spec.capacity_bytes > available:
                    raise ResourceExhausted(
                        f"pool {spec.pool} has {available} bytes left, {spec.capacity_bytes} requested")
                record = VolumeRecord(
                    volume_id=spec.volume_id, name=spec.name, pool=spec.pool, capacity_bytes=spec.capacity_bytes,
                    access_type=spec.access_type, access_modes=spec.access_modes, parameters=spec.parameters,
                    authentication=spec.authentication, state=CREATING)
                self._records.put(record)
        elif record.state == READY:
            return record
        elif record.state == DELETING:
            raise FailedPrecondition(f"volume {spec.volume_id} is being deleted; retry after DeleteVolume ends")
        # A new volume, or one a crash left half made: every step below is an idempotent "ensure".
        try:
            fault_point("create.after_record")
            backing = self._pools[record.pool].allocate(record.volume_id, record.capacity_bytes)
            fault_point("create.after_pool")
            self._export_lio(record, backing, fresh)
            fault_point("create.after_lio")
            self._save(record.volume_id)
            fault_point("create.after_save")
            ready = replace(record, state=READY)
            self._records.put(ready)
        except Exception:
            self._undo_create(record)
            raise
        return ready

    def _undo_create(self, record: VolumeRecord) -> None:
        """The CO never got this volume: take every part of it away, the record last."""
        try:
            self._unexport(record.volume_id)
            self._saved.update(storage_objects={record.volume_id: None},
                               targets={self.target_iqn(record.volume_id): None})
            self._pools[record.pool].release(record.volume_id)
            self._records.remove(record.volume_id)
        except Exception:
            log.exception("undoing the failed CreateVolume of %s left it half made; its record stays %s, and a "
                          "retried CreateVolume or a DeleteVolume finishes it", record.volume_id, record.state)

    def delete(self, volume_id: str) -> None:
        record = self._records.get(volume_id)
        if record is None:
            return
        if record.grants:
            raise FailedPrecondition(f"volume {volume_id} is still published to {sorted(record.grants)}; "
                                     "ControllerUnpublishVolume it first")
        if record.state != DELETING:
            record = replace(record, state=DELETING)
            self._records.put(record)
        fault_point("delete.after_record")
        self._unexport(volume_id)
        fault_point("delete.after_lio")
        self._saved.update(storage_objects={volume_id: None}, targets={self.target_iqn(volume_id): None})
        fault_point("delete.after_save")
        self._pools[record.pool].release(volume_id)
        fault_point("delete.after_pool")
        self._records.remove(volume_id)

    # Publish and unpublish -----------------------------------------------------------------------

    def publish(self, volume_id: str, node: NodeId, readonly: bool, chap: Chap | None) -> VolumeRecord:
        key = str(node)
        self._ensure_exported(self._ready(volume_id))
        with self._claims_lock:  # two volumes published at once to two nodes with one IQN
            record = self._ready(volume_id)
            others = sorted(name for name in self._records.holders(node.initiator_iqn) if name != node.node_name)
            if others:
                raise FailedPrecondition(
                    f"initiator {node.initiator_iqn} is already granted to node {others[0]!r}; node "
                    f"{node.node_name!r} reports the same IQN (cloned nodes?). LIO fences by IQN, so the two "
                    "cannot be kept apart: give each node its own /etc/iscsi/initiatorname.iscsi")
            added = key not in record.grants
            if added:
                record = record.with_grant(key, Grant(readonly=readonly))
                self._records.put(record)
        try:
            fault_point("publish.after_record")
            with self._lio_lock:
                self._lio.grant(self.target_iqn(volume_id), node.initiator_iqn, readonly=readonly, chap=chap)
            fault_point("publish.after_grant")
            self._save_acl(volume_id, node.initiator_iqn)
            fault_point("publish.after_save")
        except Exception:
            if added:
                self._undo_publish(volume_id, node)
            raise
        return record

    def _ensure_exported(self, record: VolumeRecord) -> None:
        """A volume start-up could not export (its pool was not there yet) is exported now, or the
        publish says why not; two configfs lookups when all is well."""
        so_ok, target_ok = self._exported(record)
        if so_ok and target_ok:
            return
        log.warning("volume %s is not exported in LIO (its pool was missing at start?); restoring it", record.volume_id)
        if not self._restore(record, so_ok, target_ok):
            raise Unavailable(f"volume {record.volume_id}'s data is missing from pool {record.pool}; it is not "
                              "exported. Check that the pool's directory or volume group is there")

    def _undo_publish(self, volume_id: str, node: NodeId) -> None:
        try:
            self._revoke(volume_id, {node.initiator_iqn})
            current = self._records.get(volume_id)
            if current is not None and str(node) in current.grants:
                self._records.put(current.without_grants([str(node)]))
        except Exception:
            log.exception("undoing the failed ControllerPublishVolume of %s to %s failed; ControllerUnpublishVolume "
                          "or the next start-up reconcile removes what is left", volume_id, node)

    def _revoke(self, volume_id: str, initiators: set[str], fault: str = "") -> None:
        """Remove the initiators' ACLs from live LIO, then from the saved config."""
        iqn = self.target_iqn(volume_id)
        for initiator in sorted(initiators):
            with self._lio_lock:
                self._lio.revoke(iqn, initiator)
        if fault:
            fault_point(fault)
        for initiator in sorted(initiators):
            self._save_acl(volume_id, initiator)

    def unpublish(self, volume_id: str, node: NodeId | None) -> None:
        """Revoke in LIO by initiator IQN whatever the record says: a publish may have died between
        the grant and the record, a node may have come back with another IQN under the same name.
        node None means every node. The one IQN left alone is one this volume's record grants to
        another node name: revoking it would fence that node, not this one (a cloned IQN)."""
        record = self._records.get(volume_id)
        grants = {k: n for k in (record.grants if record else {}) if (n := NodeId.parse(k)) is not None}
        if node is None:
            keys = list(grants)
            with self._lio_lock:
                initiators = set(self._lio.initiators(self.target_iqn(volume_id)))
        else:
            keys = [k for k, held in grants.items() if held.node_name == node.node_name]
            initiators = set()
            if not any(held.initiator_iqn == node.initiator_iqn and held.node_name != node.node_name
                       for held in grants.values()):
                initiators.add(node.initiator_iqn)
            else:
                log.warning("ControllerUnpublishVolume of %s for %s: initiator %s is granted to another node name; "
                            "leaving its ACL", volume_id, node, node.initiator_iqn)
        initiators |= {grants[k].initiator_iqn for k in keys}
        self._revoke(volume_id, initiators, fault="unpublish.after_revoke")
        fault_point("unpublish.after_save")
        current = self._records.get(volume_id)
        if current is not None and any(k in current.grants for k in keys):
            self._records.put(current.without_grants(keys))

    # Expand --------------------------------------------------------------------------------------

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
            self._reserved.hold(record.pool, delta)
        try:
            pool.grow(volume_id, capacity_bytes)
            fault_point("expand.after_pool")
            grown = replace(record, capacity_bytes=capacity_bytes)
            if not pool.online_expansion:
                # Recreate the fileio object over the grown file, same name and unit serial.
                try:
                    with self._lio_lock:
                        self._lio.delete_storage_object(volume_id, self.target_iqn(volume_id))
                    self._export(grown)
                    fault_point("expand.after_lio")
                    self._save(volume_id)
                    fault_point("expand.after_save")
                except Exception:
                    self._reexport(record)
                    raise
            self._records.put(grown)
        finally:
            self._reserved.hold(record.pool, -delta)
        return grown

    def _reexport(self, record: VolumeRecord) -> None:
        """After a failed offline growth: the volume is exported again at its recorded size (the file
        may be larger; LIO serves the recorded size of it), so it is neither left unexported nor
        bigger than its record says."""
        try:
            with self._lio_lock:
                self._lio.delete_storage_object(record.volume_id, self.target_iqn(record.volume_id))
            self._export(record)
            self._save(record.volume_id)
        except Exception:
            log.exception("volume %s could not be exported again after a failed expansion; a retried "
                          "ControllerExpandVolume or the next start-up reconcile restores it", record.volume_id)

    def _ready(self, volume_id: str) -> VolumeRecord:
        record = self._records.get(volume_id)
        if record is None or record.state != READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return record

    # Start-up ------------------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Restore what live LIO lacks from the saved config, revoke ACLs no record holds, and
        report every difference. Each volume on its own: one that fails is reported, not fatal."""
        drift: list[str] = []
        known = set()
        for record in self._records.all():
            known.add(self.target_iqn(record.volume_id))
            try:
                drift += self._reconcile_one(record)
            except Exception as exc:
                log.exception("reconcile: volume %s", record.volume_id)
                drift.append(f"volume {record.volume_id}: could not be reconciled ({type(exc).__name__}: {exc}); "
                             "the controller serves the others")
        for volume_id in sorted(self._records.unreadable):
            drift.append(f"volume {volume_id}: its record is unreadable; its LIO objects are left alone and calls on "
                         "it fail until the record is fixed or removed")
        try:
            with self._lio_lock:
                live_targets = self._lio.target_iqns(self._prefix + ":")
            for iqn in live_targets:
                # Left alone: another controller sharing this LIO with the same prefix may own it.
                if iqn not in known and iqn.rsplit(":", 1)[1] not in self._records.unreadable:
                    drift.append(f"target {iqn} exists in LIO but no volume record names it (left alone)")
        except Exception as exc:
            log.exception("reconcile: listing LIO targets")
            drift.append(f"LIO targets could not be listed ({type(exc).__name__}: {exc})")
        for line in drift:
            log.warning("reconcile: %s", line)
        DRIFT.set(len(drift))
        return drift

    def _reconcile_one(self, record: VolumeRecord) -> list[str]:
        iqn = self.target_iqn(record.volume_id)
        if record.state != READY:
            return [f"volume {record.volume_id} ({record.name}) was left {record.state} by a crash; "
                    "a retried CreateVolume/DeleteVolume finishes it"]
        so_ok, target_ok = self._exported(record)
        drift = []
        if not (so_ok and target_ok):
            drift.append(f"volume {record.volume_id}: LIO lacked its {'storage object' if not so_ok else 'target'}; "
                         "restoring")
            if not self._restore(record, so_ok, target_ok):
                drift.append(f"volume {record.volume_id}: its data is missing from pool {record.pool}; not exported")
                return drift
        with self._lio_lock:
            live = set(self._lio.initiators(iqn))
        granted = {n.initiator_iqn for n in map(NodeId.parse, record.grants) if n}
        extra = sorted(live - granted)
        for initiator in extra:
            drift.append(f"volume {record.volume_id}: LIO had an ACL for {initiator} that no publish recorded; "
                         "revoked")
        if extra:
            self._revoke(record.volume_id, set(extra))
        for missing in sorted(granted - live):
            drift.append(f"volume {record.volume_id}: ACL for {missing} is missing in LIO")
        return drift

    def _exported(self, record: VolumeRecord) -> tuple[bool, bool]:
        """Whether live LIO has the volume's storage object, and its target."""
        iqn = self.target_iqn(record.volume_id)
        with self._lio_lock:
            return self._lio.storage_object_exists(record.volume_id, iqn), self._lio.target_exists(iqn)

    def _restore(self, record: VolumeRecord, so_ok: bool, target_ok: bool) -> bool:
        """False, exporting nothing, when the volume's data is gone from its pool: LIO's fileio
        backstore would create an empty file in its place, and a node would take it for blank."""
        iqn = self.target_iqn(record.volume_id)
        if not self._pools[record.pool].exists(record.volume_id):
            log.error("reconcile: the data of volume %s is missing from pool %s", record.volume_id, record.pool)
            return False
        so_dump = None if so_ok else self._saved.storage_object(record.volume_id)
        target_dump = None if target_ok else self._saved.target(iqn)
        with self._lio_lock:
            if so_dump or target_dump:
                for error in self._lio.restore(so_dump, target_dump):
                    log.warning("reconcile: restoring %s: %s", record.volume_id, error)
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
        return True
