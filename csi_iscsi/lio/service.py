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
- snapshot: snapshot record (creating) → pool → snapshot record (ready). lvm-thin and a reflink
  are instant and done in the call; a fileio copy of an unpublished volume runs as a background
  copy (csi_iscsi.lio.copies), and CreateSnapshot answers ready_to_use=false until it is done (the
  snapshotter asks again). A failed or interrupted copy leaves the record creating; the next
  CreateSnapshot (or the start-up reconcile) starts it again.
- create from a snapshot or volume: as create, with the pool making the new volume's bytes from
  the source's; a fileio copy runs in the background too, and CreateVolume answers ABORTED
  ("in progress", retried by the provisioner) until it is done.
While a fileio item is made from a volume (its record on disk says creating), that volume cannot
be published, expanded or deleted (ABORTED): no node writes under a copy. The guard is the
record, not the running copy, so a restart does not lift it.
An RPC returns OK only after the saved config holds the change (an ACL removed but not saved
would come back at the next boot and re-open a fenced node). Fault points (csi_iscsi.base.faults)
sit between the steps; docs/failure-modes.md says what each leaves and what converges it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from prometheus_client import Gauge

from csi_iscsi import contract
from csi_iscsi.base.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from csi_iscsi.base.faults import fault_point
from csi_iscsi.base.redact import quoted
from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId
from csi_iscsi.lio.api import (
    CREATING,
    DELETING,
    READY,
    Grant,
    PoolInfo,
    SnapshotRecord,
    VolumeRecord,
    VolumeSpec,
    parse_content_source,
)
from csi_iscsi.lio.copies import Copies
from csi_iscsi.lio.objects import CONFIGFS, Lio
from csi_iscsi.lio.pools import Backing, FileioPool, Pool, PoolUsage, Reservations
from csi_iscsi.lio.records import RecordStore
from csi_iscsi.lio.saveconfig import SavedConfig
from csi_iscsi.lio.snapshot_records import SnapshotStore

log = logging.getLogger(__name__)

DRIFT = Gauge("csi_iscsi_lio_drift", "Differences between the controller's records and live LIO at start-up")
# How long a call waits for a copy it started before answering "not yet".
COPY_ANSWER_WAIT = 3.0
STOP_WAIT = 30.0


class CopyInProgress(Aborted):
    """CreateVolume's copy is still running: the CO retries, and nothing is undone."""


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
        self._snapshots = SnapshotStore(state_dir)
        self._copies = Copies()
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

    def close(self) -> None:
        """Stops the copies running in this process (a new service in the same process, in tests, or
        a shutdown): what they were making stays creating, and is made again later."""
        self._copies.stop_all(STOP_WAIT)

    def _pool(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise FailedPrecondition(f"pool {name} is not configured any more; add its --pool again to reach what "
                                     "is in it")
        return pool

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
        target = self._pool(pool)
        sharing = [pool, *(p.name for p in target.siblings)] if isinstance(target, FileioPool) else [pool]
        provisioned: dict[str, int] = {}
        shared: set[str] = set()
        for name in sharing:
            provisioned.update(self._records.capacities(name))
            shared |= self._records.made_from_sources(name)
            snapshots = self._snapshots.sizes(name)
            provisioned.update(snapshots)
            shared |= set(snapshots)
        free = target.available_bytes(provisioned, shared)
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
        self._export_lio(record, self._pool(record.pool).allocate(record.volume_id, record.capacity_bytes), fresh)

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
            source_kind, source_id = parse_content_source(spec.content_source)
            if source_kind:
                self._source(spec.pool, source_kind, source_id)
                self._pool(spec.pool).check_usage()
            with self._capacity_lock:
                available = self.available_bytes(spec.pool)
                if spec.capacity_bytes > available:
                    raise ResourceExhausted(
                        f"pool {spec.pool} has {available} bytes left, {spec.capacity_bytes} requested")
                record = VolumeRecord(
                    volume_id=spec.volume_id, name=spec.name, pool=spec.pool, capacity_bytes=spec.capacity_bytes,
                    access_type=spec.access_type, access_modes=spec.access_modes, parameters=spec.parameters,
                    authentication=spec.authentication, state=CREATING, content_source=spec.content_source)
                self._records.put(record)
        elif record.state == READY:
            return record
        elif record.state == DELETING:
            raise FailedPrecondition(f"volume {spec.volume_id} is being deleted; retry after DeleteVolume ends")
        # A new volume, or one a crash left half made: every step below is an idempotent "ensure".
        try:
            fault_point("create.after_record")
            backing = self._allocate(record)
            fault_point("create.after_pool")
            self._export_lio(record, backing, fresh)
            fault_point("create.after_lio")
            self._save(record.volume_id)
            fault_point("create.after_save")
            ready = replace(record, state=READY)
            self._records.put(ready)
        except CopyInProgress:
            raise
        except Exception:
            self._undo_create(record)
            raise
        return ready

    def _source(self, pool: str, kind: str, source_id: str) -> bool:
        """Checks that a new volume in `pool` can be made from the source; returns whether a node
        may be writing the source now."""
        if kind == "snapshot":
            snapshot = self._snapshots.get(source_id)
            if snapshot is None or snapshot.state == DELETING:
                raise NotFound(f"snapshot {source_id} does not exist")
            if snapshot.state != READY:
                raise FailedPrecondition(f"snapshot {source_id} is not ready yet (its copy is running); retry later")
            source_pool, in_use = snapshot.pool, False
        elif kind == "volume":
            volume = self._records.get(source_id)
            if volume is None or volume.state != READY:
                raise NotFound(f"volume {source_id} does not exist")
            source_pool, in_use = volume.pool, bool(volume.grants)
        else:
            raise InvalidArgument(f"unknown volume content source {kind!r}")
        if source_pool != pool:
            raise InvalidArgument(f"{kind} {source_id} is in pool {source_pool}; a volume made from it must be in "
                                  f"the same pool, not {pool} (StorageClass parameter pool)")
        return in_use

    def _allocate(self, record: VolumeRecord) -> Backing:
        pool = self._pool(record.pool)
        kind, source_id = parse_content_source(record.content_source)
        if not kind:
            return pool.allocate(record.volume_id, record.capacity_bytes)
        if pool.exists(record.volume_id):
            # Made already (a retry after a crash): the source may be gone since, and is not needed.
            return pool.allocate_from(source_id, record.volume_id, record.capacity_bytes, in_use=False)
        in_use = self._source(record.pool, kind, source_id)
        if not pool.copies_data or in_use:
            # Instant (a thin snapshot, a reflink), or refused at once when only a copy would do.
            return pool.allocate_from(source_id, record.volume_id, record.capacity_bytes, in_use=in_use)
        error = self._copies.failure(record.volume_id)
        if error:
            raise Internal(f"copying {kind} {source_id} into volume {record.volume_id} failed ({error}); a retried "
                           "CreateVolume starts again")
        job = self._copies.start(record.volume_id, source_id, lambda cancel: pool.allocate_from(
            source_id, record.volume_id, record.capacity_bytes, in_use=False, cancel=cancel))
        if not job.done.wait(COPY_ANSWER_WAIT) or job.error:
            if job.error:
                self._copies.failure(record.volume_id)
                raise Internal(f"copying {kind} {source_id} into volume {record.volume_id} failed ({job.error})")
            raise CopyInProgress(f"volume {record.volume_id} is being copied from {kind} {source_id} (a fileio "
                                 "pool without reflink copies the data); retry later")
        if not pool.exists(record.volume_id):
            # A copy stopped without an error (a shutdown) made nothing: never allocate an empty
            # file in its place, which a node would take for a blank volume and format.
            raise CopyInProgress(f"the copy into volume {record.volume_id} was stopped; retry to start it again")
        return pool.allocate(record.volume_id, record.capacity_bytes)

    def _undo_create(self, record: VolumeRecord) -> None:
        """The CO never got this volume: take every part of it away, the record last."""
        try:
            if not self._copies.stop(record.volume_id, STOP_WAIT):
                raise Aborted(f"the copy into volume {record.volume_id} is still stopping")
            self._unexport(record.volume_id)
            self._saved.update(storage_objects={record.volume_id: None},
                               targets={self.target_iqn(record.volume_id): None})
            self._pool(record.pool).release(record.volume_id)
            self._records.remove(record.volume_id)
        except Exception:
            log.exception("undoing the failed CreateVolume of %s left it half made; its record stays %s, and a "
                          "retried CreateVolume or a DeleteVolume finishes it", record.volume_id, record.state)

    def delete(self, volume_id: str) -> None:
        record = self._records.get(volume_id)
        if record is None:
            return
        self._refuse_while_copied(volume_id, "deleted")
        if not self._copies.stop(volume_id, STOP_WAIT):
            raise Aborted(f"the copy into volume {volume_id} is still stopping; retry")
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
        self._pool(record.pool).release(volume_id)
        fault_point("delete.after_pool")
        self._records.remove(volume_id)

    # Publish and unpublish -----------------------------------------------------------------------

    def publish(self, volume_id: str, node: NodeId, readonly: bool, chap: Chap | None) -> VolumeRecord:
        key = str(node)
        self._refuse_while_copied(volume_id, "published")
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
        pool = self._pool(record.pool)
        self._refuse_while_copied(volume_id, "expanded")
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

    # Snapshots -----------------------------------------------------------------------------------

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        return self._snapshots.get(snapshot_id)

    def snapshot_page(self, start_after: str, limit: int, source_volume_id: str = "") -> \
            tuple[list[SnapshotRecord], str]:
        return self._snapshots.page(start_after, limit, source_volume_id)

    def create_snapshot(self, snapshot_id: str, name: str, source_volume_id: str) -> SnapshotRecord:
        record = self._snapshots.get(snapshot_id)
        if record is not None:
            if record.source_volume_id != source_volume_id or record.name != name:
                raise AlreadyExists(f"snapshot {quoted(name)} exists, of volume {record.source_volume_id}")
            if record.state == READY:
                return record
            if record.state == DELETING:
                raise FailedPrecondition(f"snapshot {snapshot_id} is being deleted; retry after DeleteSnapshot ends")
            return self._finish_snapshot(record, made_here=False)
        source = self._ready(source_volume_id)
        self._pool(source.pool).check_usage()  # an LVM report: not under the lock every create takes
        with self._capacity_lock:
            # A snapshot counts its full size against the pool (it may need all of it anew).
            available = self.available_bytes(source.pool)
            if source.capacity_bytes > available:
                raise ResourceExhausted(f"pool {source.pool} has {available} bytes left; a snapshot of volume "
                                        f"{source_volume_id} takes {source.capacity_bytes}")
            record = SnapshotRecord(snapshot_id=snapshot_id, name=name, source_volume_id=source_volume_id,
                                    pool=source.pool, size_bytes=source.capacity_bytes, created_ns=time.time_ns())
            self._snapshots.put(record)
        return self._finish_snapshot(record, made_here=True)

    def _finish_snapshot(self, record: SnapshotRecord, made_here: bool) -> SnapshotRecord:
        pool = self._pool(record.pool)
        try:
            fault_point("snapshot.after_record")
            source = self._records.get(record.source_volume_id)
            if source is None or source.state != READY:
                raise FailedPrecondition(f"snapshot {record.snapshot_id} was left half made and its source volume "
                                         f"{record.source_volume_id} is gone; delete the snapshot")
            in_use = bool(source.grants)
            if pool.copies_data and not in_use:
                return self._copy_snapshot(record)
            pool.snapshot(record.source_volume_id, record.snapshot_id, in_use=in_use)
            fault_point("snapshot.after_pool")
            ready = replace(record, state=READY)
            self._snapshots.put(ready)
            return ready
        except Exception:
            # The CO never learnt of a snapshot first made by this call: take it away. One it was
            # already told of (ready_to_use=false) keeps its record: its id and creation time are
            # the CO's, and the next CreateSnapshot tries again.
            if made_here:
                self._undo_snapshot(record)
            raise

    def _undo_snapshot(self, record: SnapshotRecord) -> None:
        """The CO was never told of this snapshot: take it away, the record last."""
        try:
            self._pool(record.pool).release_snapshot(record.snapshot_id)
            self._snapshots.remove(record.snapshot_id)
        except Exception:
            log.exception("undoing the failed CreateSnapshot of %s left it half made; its record stays %s, and a "
                          "retried CreateSnapshot or a DeleteSnapshot finishes it", record.snapshot_id, record.state)

    def _copy_snapshot(self, record: SnapshotRecord, wait: float = COPY_ANSWER_WAIT) -> SnapshotRecord:
        pool = self._pool(record.pool)

        def work(cancel: threading.Event) -> None:
            started = time.monotonic()
            pool.snapshot(record.source_volume_id, record.snapshot_id, in_use=False, cancel=cancel)
            fault_point("snapshot.after_pool")
            if not cancel.is_set():
                self._snapshots.put(replace(record, state=READY))
                log.info("snapshot %s of volume %s ready after %.1f s", record.snapshot_id, record.source_volume_id,
                         time.monotonic() - started)

        # A copy that failed before is reported once here (its job ends with that), and the next
        # call starts a new one.
        job = self._copies.start(record.snapshot_id, record.source_volume_id, work)
        job.done.wait(wait)
        error = self._copies.failure(record.snapshot_id)
        if error:
            raise Internal(f"copying volume {record.source_volume_id} for snapshot {record.snapshot_id} failed "
                           f"({error}); the next CreateSnapshot starts the copy again")
        return self._snapshots.get(record.snapshot_id) or record

    def _copied_from(self, volume_id: str) -> str | None:
        """What is being copied from this volume, if anything.

        A snapshot by its record on disk: it is the volume at the time the CO was first answered,
        so until its copy is complete nothing may write the volume, across restarts too (the
        reconcile starts the copy again; DeleteSnapshot ends it). A volume made from this one only
        while its copy runs: a retried CreateVolume copies afresh, from the volume as it is then,
        and a copy nobody retries must not keep the volume from its pods."""
        for snapshot in self._snapshots.of_volume(volume_id):
            pool = self._pools.get(snapshot.pool)
            if snapshot.state == CREATING and (pool is None or pool.copies_data):
                running = "its copy is running" if self._copies.running(snapshot.snapshot_id) else \
                    "its copy is not complete (see the controller's log; the next CreateSnapshot starts it again)"
                return f"snapshot {snapshot.snapshot_id} of it is not made yet ({running})"
        reader = self._copies.reading(volume_id)
        return f"volume {reader} is being copied from it" if reader is not None else None

    def _refuse_while_copied(self, volume_id: str, verb: str) -> None:
        why = self._copied_from(volume_id)
        if why is not None:
            raise Aborted(f"volume {volume_id} cannot be {verb} now: {why}. Retry when that is done, or delete the "
                          "snapshot or volume being made")

    def delete_snapshot(self, snapshot_id: str) -> None:
        if self._snapshots.get(snapshot_id) is None:
            return
        reader = self._copies.reading(snapshot_id)
        if reader is not None:
            raise Aborted(f"snapshot {snapshot_id} is being copied into volume {reader}; retry when that is done")
        if not self._copies.stop(snapshot_id, STOP_WAIT):
            raise Aborted(f"the copy for snapshot {snapshot_id} is still stopping; retry")
        record = self._snapshots.get(snapshot_id)
        if record is None:
            return
        if record.state != DELETING:
            record = replace(record, state=DELETING)
            self._snapshots.put(record)
        fault_point("delete_snapshot.after_record")
        self._pool(record.pool).release_snapshot(snapshot_id)
        fault_point("delete_snapshot.after_pool")
        self._snapshots.remove(snapshot_id)

    def _ready(self, volume_id: str) -> VolumeRecord:
        record = self._records.get(volume_id)
        if record is None or record.state != READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return record

    # Health --------------------------------------------------------------------------------------

    def present(self, records: Sequence[VolumeRecord]) -> dict[str, bool | str]:
        """For each record, whether its pool holds its data (one listing per pool), or why that
        could not be told."""
        found: dict[str, bool | str] = {}
        by_pool: dict[str, list[str]] = {}
        for record in records:
            by_pool.setdefault(record.pool, []).append(record.volume_id)
        for name, ids in by_pool.items():
            try:
                held = self._pool(name).present(ids)
                found.update({i: i in held for i in ids})
            except Exception as exc:  # one pool that cannot be read leaves the others' answers
                found.update({i: f"pool {name} could not be listed ({type(exc).__name__}: {exc})" for i in ids})
        return found

    def faults(self, record: VolumeRecord, listed: bool | str | None = None) -> list[str]:
        """What is wrong with a ready volume's export now, in words an operator can act on; empty
        when nothing is. listed: what present() said of it (None: ask the pool). A volume the
        listing missed is asked again, alone: a listing races with calls on other volumes."""
        faults = []
        if listed is None or listed is False:  # a listing that failed is not asked again per volume
            try:
                listed = self._pool(record.pool).exists(record.volume_id)
            except Exception as exc:
                listed = f"pool {record.pool} could not be asked ({type(exc).__name__}: {exc})"
        if isinstance(listed, str):
            faults.append(listed)
        elif not listed:
            faults.append(f"its data is missing from pool {record.pool}; LIO may still serve a deleted file or LV, "
                          "which a restart of LIO loses")
        iqn = self.target_iqn(record.volume_id)
        grants = {n.initiator_iqn: g.readonly for node_id, g in record.grants.items() if (n := NodeId.parse(node_id))}
        with self._lio_lock:
            faults += self._lio.export_faults(record.volume_id, iqn, self.portals, record.authentication != "none",
                                              grants)
        return faults

    def target_counters(self) -> dict[str, dict[str, int]]:
        """volume id -> LIO's counters of its target (csi_iscsi.lio.objects.TARGET_COUNTERS), for
        every ready volume. Plain configfs reads, no lock: a scrape never waits on a call."""
        return {r.volume_id: self._lio.target_stats(self.target_iqn(r.volume_id))
                for r in self._records.all() if r.state == READY}

    def pool_figures(self, name: str) -> tuple[PoolUsage, int, int]:
        """A pool's usage, the bytes its volumes and snapshots were promised, and what GetCapacity
        would offer now."""
        usage = self._pool(name).usage_now()
        provisioned = sum(self._records.capacities(name).values()) + sum(self._snapshots.sizes(name).values())
        return usage, provisioned, self.available_bytes(name)

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
        for snapshot in self._snapshots.all():
            if snapshot.state == READY:
                continue
            drift.append(f"snapshot {snapshot.snapshot_id} ({quoted(snapshot.name)}) was left {snapshot.state} by a "
                         "restart; a retried CreateSnapshot/DeleteSnapshot finishes it")
            try:  # each snapshot on its own: one that cannot be resumed is reported, not fatal
                pool = self._pools.get(snapshot.pool)
                source = self._records.get(snapshot.source_volume_id)
                if snapshot.state == CREATING and pool is not None and pool.copies_data and source is not None \
                        and source.state == READY and not source.grants:
                    self._copy_snapshot(snapshot, wait=0)  # its source stays unpublished until it is done
            except Exception as exc:
                drift.append(f"snapshot {snapshot.snapshot_id}: its copy could not start again "
                             f"({type(exc).__name__}: {exc})")
        for snapshot_id in sorted(self._snapshots.unreadable):
            drift.append(f"snapshot {snapshot_id}: its record is unreadable; calls on it fail until it is fixed")
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
        # The target's own settings are reported, not changed: an operator may have disabled a
        # target or changed it on purpose (a manual fence), and a restart must not undo that.
        with self._lio_lock:
            faults = self._lio.export_faults(record.volume_id, iqn, self.portals, record.authentication != "none", {})
        drift += [f"volume {record.volume_id}: {fault} (left as it is)" for fault in faults]
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
        if not self._pool(record.pool).exists(record.volume_id):
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
