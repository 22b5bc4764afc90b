"""The CSI Controller service: request checks, idempotency rules and status codes; the volumes
themselves are the target backend's (csi_iscsi.lio.api.TargetBackend)."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from csi_iscsi import contract
from csi_iscsi.base.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.base.redact import quoted
from csi_iscsi.chap import chap_from_secrets
from csi_iscsi.contract import (
    AUTH_MODES,
    DEFAULT_ZONE,
    TOPOLOGY_KEY,
    NodeId,
    Parameters,
    PublishContext,
    VolumeContext,
)
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.lio.api import (
    DELETING,
    READY,
    SIZE_ALIGN,
    SnapshotRecord,
    TargetBackend,
    VolumeRecord,
    VolumeSpec,
    align,
    content_source,
    parse_content_source,
)
from csi_iscsi.topology import accessible_zones, topologies
from csi_iscsi.volume_capabilities import READONLY_MODES, check_all, check_one, is_single_node, mode_allowed

log = logging.getLogger(__name__)

LIST_MARGIN = 2.0  # seconds kept back from ListVolumes' deadline
DEFAULT_SIZE = 1024 * 1024 * 1024

Cap = csi_pb2.ControllerServiceCapability.RPC
CAPABILITIES = [
    Cap.CREATE_DELETE_VOLUME, Cap.PUBLISH_UNPUBLISH_VOLUME, Cap.LIST_VOLUMES, Cap.GET_CAPACITY,
    Cap.PUBLISH_READONLY, Cap.EXPAND_VOLUME, Cap.LIST_VOLUMES_PUBLISHED_NODES, Cap.SINGLE_NODE_MULTI_WRITER,
    Cap.CREATE_DELETE_SNAPSHOT, Cap.LIST_SNAPSHOTS, Cap.CLONE_VOLUME, Cap.GET_VOLUME, Cap.VOLUME_CONDITION,
]


def _capacity(cr: csi_pb2.CapacityRange) -> int:
    required, limit = cr.required_bytes, cr.limit_bytes
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise InvalidArgument(f"capacity_range required_bytes {required} exceeds limit_bytes {limit}")
    size = align(required or DEFAULT_SIZE)
    if limit and size > limit:
        size = limit // SIZE_ALIGN * SIZE_ALIGN
        if size < max(required, 1):
            raise OutOfRange(f"no size that is a multiple of {SIZE_ALIGN} bytes fits between "
                             f"{required} and {limit} bytes")
    return size


def _capacity_from(cr: csi_pb2.CapacityRange, source_bytes: int) -> int:
    """A volume made from a source holds all of it: never smaller than the source. A larger one
    is fine for a raw device; a filesystem is grown to it when the node stages it."""
    if cr.limit_bytes and cr.limit_bytes < source_bytes:
        raise OutOfRange(f"the source holds {source_bytes} bytes, more than limit_bytes {cr.limit_bytes}")
    size = _capacity(cr) if cr.required_bytes else source_bytes
    return max(size, source_bytes)


def _content_source(source: csi_pb2.VolumeContentSource) -> tuple[str, str]:
    if source.HasField("snapshot"):
        if not source.snapshot.snapshot_id:
            raise InvalidArgument("volume_content_source.snapshot.snapshot_id is required")
        return "snapshot", source.snapshot.snapshot_id
    if source.HasField("volume"):
        if not source.volume.volume_id:
            raise InvalidArgument("volume_content_source.volume.volume_id is required")
        return "volume", source.volume.volume_id
    raise InvalidArgument("volume_content_source names neither a snapshot nor a volume")


def _content_source_pb(value: str) -> csi_pb2.VolumeContentSource | None:
    kind, source_id = parse_content_source(value)
    if kind == "snapshot":
        return csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=source_id))
    if kind == "volume":
        return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source_id))
    return None


def _snapshot(record: SnapshotRecord) -> csi_pb2.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(record.created_ns)
    return csi_pb2.Snapshot(size_bytes=record.size_bytes, snapshot_id=record.snapshot_id,
                            source_volume_id=record.source_volume_id, creation_time=created,
                            ready_to_use=record.state == READY)


def _fits(record: VolumeRecord, cr: csi_pb2.CapacityRange) -> bool:
    return record.capacity_bytes >= cr.required_bytes and (
        not cr.limit_bytes or record.capacity_bytes <= cr.limit_bytes)


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    def __init__(self, target: TargetBackend, zones: tuple[str, ...] = (DEFAULT_ZONE,)) -> None:
        self._target = target
        self._zones = zones
        self._locks = VolumeLocks()
        # The last condition each volume was seen in: what a look answers while a call is in flight.
        self._conditions: dict[str, csi_pb2.VolumeCondition] = {}

    # Helpers -------------------------------------------------------------------------------------

    def _parameters(self, params: dict[str, str]) -> tuple[str, str, dict[str, str]]:
        own = {k: v for k, v in params.items() if not k.startswith(Parameters.KUBERNETES_PREFIX)}
        unknown = sorted(set(own) - {Parameters.POOL, Parameters.AUTHENTICATION})
        if unknown:
            shown = ", ".join(quoted(k, 40) for k in unknown[:5])
            raise InvalidArgument(f"unknown StorageClass parameters {shown}; known: "
                                  f"{[Parameters.POOL, Parameters.AUTHENTICATION]} (see docs/contract.md)")
        pool = own.get(Parameters.POOL) or self._target.default_pool()
        if pool not in self._target.pools():
            raise InvalidArgument(f"pool {quoted(pool)} is not configured; pools: {sorted(self._target.pools())}")
        auth = own.get(Parameters.AUTHENTICATION, "none")
        if auth not in AUTH_MODES:
            raise InvalidArgument(f"authentication must be one of {list(AUTH_MODES)}, not {quoted(auth)}")
        own[Parameters.POOL] = pool
        own[Parameters.AUTHENTICATION] = auth
        return pool, auth, own

    def _volume_context(self, record: VolumeRecord) -> dict[str, str]:
        return {
            VolumeContext.TARGET_IQN: self._target.target_iqn(record.volume_id),
            VolumeContext.PORTALS: ",".join(self._target.portals),
            VolumeContext.LUN: "0",
            VolumeContext.WWID: contract.wwid(record.volume_id),
            VolumeContext.POOL: record.pool,
        }

    def _volume(self, record: VolumeRecord, zones: list[str] | None = None) -> csi_pb2.Volume:
        return csi_pb2.Volume(volume_id=record.volume_id, capacity_bytes=record.capacity_bytes,
                              volume_context=self._volume_context(record),
                              content_source=_content_source_pb(record.content_source),
                              accessible_topology=topologies(self._zones if zones is None else zones))

    def _source_size(self, kind: str, source_id: str) -> int:
        """The source's size; NOT_FOUND for an id that is not ours or names nothing."""
        if kind == "snapshot":
            snapshot = self._target.get_snapshot(source_id) if contract.is_snapshot_id(source_id) else None
            if snapshot is None:
                raise NotFound(f"snapshot {quoted(source_id)} does not exist")
            return snapshot.size_bytes
        return self._record(source_id).capacity_bytes

    def _condition(self, record: VolumeRecord, listed: bool | str | None = None) -> csi_pb2.VolumeCondition:
        """The volume's condition as the external-health-monitor reports it on the PVC. Never takes
        the volume's lock (a check must not turn a publish or a delete away): a volume with a call
        in flight, or one a call touched during the look, gets its last known condition instead, so
        a half-done call is never reported as a fault, nor a fault as cured."""
        volume_id = record.volume_id
        before = self._locks.generation(volume_id)
        if self._locks.busy(volume_id):
            return self._last_condition(volume_id, "a call on the volume is in progress")
        current = self._target.get(volume_id)
        if current is None or current.state != READY:
            return self._last_condition(volume_id, "a call changed the volume during the check")
        try:
            faults = self._target.faults(current, listed if current == record else None)
        except Exception as exc:
            log.exception("checking the condition of volume %s", volume_id)
            faults = [f"its condition could not be checked ({type(exc).__name__}: {exc})"]
        if self._locks.busy(volume_id) or self._locks.generation(volume_id) != before:
            return self._last_condition(volume_id, "a call changed the volume during the check")
        condition = csi_pb2.VolumeCondition(abnormal=bool(faults), message="; ".join(faults))
        self._conditions[volume_id] = condition
        return condition

    def _last_condition(self, volume_id: str, why: str) -> csi_pb2.VolumeCondition:
        known = self._conditions.get(volume_id)
        if known is not None:
            return known
        return csi_pb2.VolumeCondition(abnormal=False, message=f"{why}; its condition is checked at the next look")

    def _record(self, volume_id: str) -> VolumeRecord:
        record = self._target.get(volume_id) if contract.is_volume_id(volume_id) else None
        if record is None:
            raise NotFound(f"volume {quoted(volume_id)} does not exist")
        return record

    # RPCs ----------------------------------------------------------------------------------------

    def CreateVolume(self, request: csi_pb2.CreateVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.CreateVolumeResponse:
        if not request.name:
            raise InvalidArgument("name is required")
        requested = check_all(request.volume_capabilities)
        source_kind, source_id = (_content_source(request.volume_content_source)
                                  if request.HasField("volume_content_source") else ("", ""))
        if request.mutable_parameters:
            raise InvalidArgument("mutable_parameters are not supported (no ModifyVolume)")
        pool, auth, params = self._parameters(dict(request.parameters))
        source = content_source(source_kind, source_id) if source_kind else ""
        unreachable: ResourceExhausted | None = None
        try:
            zones = accessible_zones(self._zones, request.accessibility_requirements
                                     if request.HasField("accessibility_requirements") else None)
        except ResourceExhausted as exc:
            zones, unreachable = [], exc
        volume_id = contract.volume_id_for_name(request.name)
        with self._locks.hold(volume_id, "CreateVolume"):
            existing = self._target.get(volume_id)
            if existing is not None:
                if existing.name != request.name:
                    raise Internal(f"volume id {volume_id} collides for two names; rename the claim")
                if not _fits(existing, request.capacity_range) or existing.parameters != params \
                        or existing.access_type != requested.access_type \
                        or set(existing.access_modes) != set(requested.modes) \
                        or existing.content_source != source:
                    raise AlreadyExists(
                        f"volume {quoted(request.name)} exists ({existing.capacity_bytes} bytes, "
                        f"{existing.access_type}, {dict(existing.parameters)}, source "
                        f"{existing.content_source or 'none'}) and does not match this request")
                if unreachable is not None:
                    raise AlreadyExists(f"volume {quoted(request.name)} exists and is reachable from the zones this "
                                        f"controller serves, which the requested topology excludes: {unreachable}")
                size = existing.capacity_bytes
            elif unreachable is not None:
                raise unreachable
            elif source_kind:
                size = _capacity_from(request.capacity_range, self._source_size(source_kind, source_id))
            else:
                size = _capacity(request.capacity_range)
            # The source is held while the volume is made from it: a snapshot is not deleted, nor a
            # volume published, under the copy. A volume already made needs its source no more.
            hold_source = bool(source_kind) and source_id != volume_id and (existing is None or existing.state != READY)
            with self._locks.hold(source_id, "CreateVolume from it") if hold_source else nullcontext():
                record = self._target.create(VolumeSpec(
                    volume_id=volume_id, name=request.name, pool=pool, capacity_bytes=size,
                    access_type=requested.access_type, access_modes=requested.modes, parameters=params,
                    authentication=auth, content_source=source))
        return csi_pb2.CreateVolumeResponse(volume=self._volume(record, zones))

    def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.DeleteVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id is required")
        if contract.is_volume_id(request.volume_id):
            with self._locks.hold(request.volume_id, "DeleteVolume"):
                self._target.delete(request.volume_id)
                self._conditions.pop(request.volume_id, None)
        return csi_pb2.DeleteVolumeResponse()

    def ControllerPublishVolume(self, request: csi_pb2.ControllerPublishVolumeRequest,
                                context: grpc.ServicerContext) -> csi_pb2.ControllerPublishVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id is required")
        if not request.node_id:
            raise InvalidArgument("node_id is required")
        if not request.HasField("volume_capability"):
            raise InvalidArgument("volume_capability is required")
        cap = check_one(request.volume_capability)
        record = self._record(request.volume_id)
        node = NodeId.parse(request.node_id)
        if node is None:
            raise NotFound(f"node {quoted(request.node_id)} is not a csi-iscsi node id "
                           "(<node name>/<initiator IQN>)")
        if cap.access_type != record.access_type:
            raise InvalidArgument(f"volume {record.volume_id} is a {record.access_type} volume, "
                                  f"not {cap.access_type}")
        if not mode_allowed(cap.modes[0], record.access_modes):
            raise InvalidArgument(f"volume {record.volume_id} was created for {list(record.access_modes)}; "
                                  f"it cannot be published as {cap.modes[0]}")
        readonly = request.readonly or request.volume_capability.access_mode.mode in READONLY_MODES
        chap = chap_from_secrets(record.authentication, dict(request.secrets),
                                 "csi.storage.k8s.io/controller-publish-secret-name")
        with self._locks.hold(record.volume_id, "ControllerPublishVolume"):
            record = self._record(request.volume_id)
            grant = record.grants.get(str(node))
            if grant is not None and grant.readonly != readonly:
                raise AlreadyExists(f"volume {record.volume_id} is already published to {node} with "
                                    f"readonly={grant.readonly}")
            others = sorted(n for n in record.grants if n != str(node))
            if others and (is_single_node(record.access_modes) or is_single_node(cap.modes)):
                raise FailedPrecondition(f"volume {record.volume_id} is single-node and published to {others}; "
                                         "unpublish it there first")
            if others and not readonly:
                raise FailedPrecondition(f"volume {record.volume_id} is published to {others}; "
                                         "more nodes may only read it")
            self._target.publish(record.volume_id, node, readonly, chap)
        context_ = self._volume_context(record)
        context_.pop(VolumeContext.POOL)
        context_[PublishContext.AUTH] = record.authentication
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=context_)

    def ControllerUnpublishVolume(self, request: csi_pb2.ControllerUnpublishVolumeRequest,
                                  context: grpc.ServicerContext) -> csi_pb2.ControllerUnpublishVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id is required")
        if not contract.is_volume_id(request.volume_id):
            return csi_pb2.ControllerUnpublishVolumeResponse()
        with self._locks.hold(request.volume_id, "ControllerUnpublishVolume"):
            if not request.node_id:
                self._target.unpublish(request.volume_id, None)  # from every node
            elif (node := NodeId.parse(request.node_id)) is not None:
                self._target.unpublish(request.volume_id, node)
        return csi_pb2.ControllerUnpublishVolumeResponse()

    def ValidateVolumeCapabilities(self, request: csi_pb2.ValidateVolumeCapabilitiesRequest,
                                   context: grpc.ServicerContext) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id is required")
        if not request.volume_capabilities:
            raise InvalidArgument("volume_capabilities is required")
        record = self._record(request.volume_id)
        try:
            requested = check_all(request.volume_capabilities)
            if requested.access_type != record.access_type:
                raise InvalidArgument(f"the volume is a {record.access_type} volume")
            if request.parameters:
                _, _, params = self._parameters(dict(request.parameters))
                if params != record.parameters:
                    raise InvalidArgument("the parameters differ from the volume's")
        except InvalidArgument as exc:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=str(exc))
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
                parameters=request.parameters))

    def ListVolumes(self, request: csi_pb2.ListVolumesRequest,
                    context: grpc.ServicerContext) -> csi_pb2.ListVolumesResponse:
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        if request.starting_token and not contract.is_volume_id(request.starting_token):
            raise Aborted(f"starting_token {quoted(request.starting_token)} is not one this driver issued")
        records, token = self._target.page(request.starting_token, request.max_entries)
        listed = self._target.present(records)
        entries = []
        for r in records:
            # Checks stop short of the caller's deadline (the health monitor gives its whole paged
            # listing 60 s): the rest get their last known condition, and the listing still arrives.
            left = context.time_remaining()
            condition = self._condition(r, listed[r.volume_id]) if left is None or left > LIST_MARGIN else \
                self._last_condition(r.volume_id, "no time was left to check it in this call")
            entries.append(csi_pb2.ListVolumesResponse.Entry(
                volume=self._volume(r), status=csi_pb2.ListVolumesResponse.VolumeStatus(
                    published_node_ids=sorted(r.grants), volume_condition=condition)))
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=token)

    def ControllerGetVolume(self, request: csi_pb2.ControllerGetVolumeRequest,
                            context: grpc.ServicerContext) -> csi_pb2.ControllerGetVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id is required")
        record = self._record(request.volume_id)
        if record.state != READY:  # being created or deleted: not a volume the CO may use (ListVolumes agrees)
            raise NotFound(f"volume {request.volume_id} does not exist (it is {record.state})")
        return csi_pb2.ControllerGetVolumeResponse(
            volume=self._volume(record),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(published_node_ids=sorted(record.grants),
                                                                    volume_condition=self._condition(record)))

    def GetCapacity(self, request: csi_pb2.GetCapacityRequest,
                    context: grpc.ServicerContext) -> csi_pb2.GetCapacityResponse:
        # external-provisioner's capacity tracking asks with a bare mount capability whose access
        # mode is UNKNOWN: refusing it would leave no CSIStorageCapacity objects, and with CSIDriver
        # storageCapacity true the scheduler would then place no WaitForFirstConsumer pod. A
        # capability the driver cannot serve gets no room (0), not an error.
        known = [c for c in request.volume_capabilities
                 if c.access_mode.mode != csi_pb2.VolumeCapability.AccessMode.UNKNOWN]
        servable = True
        if known:
            try:
                check_all(known)
            except InvalidArgument:
                servable = False
        pool, _, _ = self._parameters(dict(request.parameters))
        zone = request.accessible_topology.segments.get(TOPOLOGY_KEY) if request.HasField(
            "accessible_topology") else None
        # The target is reachable from the zones the controller serves; elsewhere there is nothing to give.
        available = self._target.available_bytes(pool) if servable and zone in (None, *self._zones) else 0
        return csi_pb2.GetCapacityResponse(
            available_capacity=available, maximum_volume_size={"value": available},
            minimum_volume_size={"value": SIZE_ALIGN})

    def ControllerGetCapabilities(self, request: csi_pb2.ControllerGetCapabilitiesRequest,
                                  context: grpc.ServicerContext) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=csi_pb2.ControllerServiceCapability.RPC(type=c))
            for c in CAPABILITIES])

    def ControllerExpandVolume(self, request: csi_pb2.ControllerExpandVolumeRequest,
                               context: grpc.ServicerContext) -> csi_pb2.ControllerExpandVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id is required")
        if not request.HasField("capacity_range"):
            raise InvalidArgument("capacity_range is required")
        record = self._record(request.volume_id)
        size = _capacity(request.capacity_range)
        with self._locks.hold(record.volume_id, "ControllerExpandVolume"):
            record = self._target.expand(record.volume_id, size)
        # A filesystem always grows on the node; a raw device grown while published needs the node to
        # rescan its paths and resize the map (unpublished, the next attach sees the new size).
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=record.capacity_bytes,
            node_expansion_required=record.access_type == "mount" or bool(record.grants))

    # Snapshots -----------------------------------------------------------------------------------

    def CreateSnapshot(self, request: csi_pb2.CreateSnapshotRequest,
                       context: grpc.ServicerContext) -> csi_pb2.CreateSnapshotResponse:
        if not request.name:
            raise InvalidArgument("name is required")
        if not request.source_volume_id:
            raise InvalidArgument("source_volume_id is required")
        unknown = sorted(k for k in request.parameters if not k.startswith(Parameters.KUBERNETES_PREFIX))
        if unknown:
            shown = ", ".join(quoted(k, 40) for k in unknown[:5])
            raise InvalidArgument(f"unknown VolumeSnapshotClass parameters {shown}; csi-iscsi takes none")
        snapshot_id = contract.snapshot_id_for_name(request.name)
        made = self._target.get_snapshot(snapshot_id)
        if made is not None and made.name == request.name and made.state == READY \
                and made.source_volume_id == request.source_volume_id:
            # Made already: its source may be gone since, and is not needed to answer.
            return csi_pb2.CreateSnapshotResponse(snapshot=_snapshot(made))
        source = self._record(request.source_volume_id)
        with self._locks.hold(snapshot_id, "CreateSnapshot"), \
                self._locks.hold(source.volume_id, "CreateSnapshot of it"):
            existing = self._target.get_snapshot(snapshot_id)
            if existing is not None and existing.name != request.name:
                raise Internal(f"snapshot id {snapshot_id} collides for two names; rename the VolumeSnapshot")
            if existing is not None and existing.source_volume_id != source.volume_id:
                raise AlreadyExists(f"snapshot {quoted(request.name)} exists, of volume {existing.source_volume_id}, "
                                    f"not {source.volume_id}")
            record = self._target.create_snapshot(snapshot_id, request.name, source.volume_id)
        return csi_pb2.CreateSnapshotResponse(snapshot=_snapshot(record))

    def DeleteSnapshot(self, request: csi_pb2.DeleteSnapshotRequest,
                       context: grpc.ServicerContext) -> csi_pb2.DeleteSnapshotResponse:
        if not request.snapshot_id:
            raise InvalidArgument("snapshot_id is required")
        if contract.is_snapshot_id(request.snapshot_id):
            with self._locks.hold(request.snapshot_id, "DeleteSnapshot"):
                self._target.delete_snapshot(request.snapshot_id)
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(self, request: csi_pb2.ListSnapshotsRequest,
                      context: grpc.ServicerContext) -> csi_pb2.ListSnapshotsResponse:
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        if request.snapshot_id:
            found = self._target.get_snapshot(request.snapshot_id) if contract.is_snapshot_id(
                request.snapshot_id) else None
            if found is None or found.state == DELETING or (
                    request.source_volume_id and found.source_volume_id != request.source_volume_id):
                return csi_pb2.ListSnapshotsResponse()
            entry = csi_pb2.ListSnapshotsResponse.Entry(snapshot=_snapshot(found))
            return csi_pb2.ListSnapshotsResponse(entries=[entry])
        if request.source_volume_id and not contract.is_volume_id(request.source_volume_id):
            return csi_pb2.ListSnapshotsResponse()
        if request.starting_token and not contract.is_snapshot_id(request.starting_token):
            raise Aborted(f"starting_token {quoted(request.starting_token)} is not one this driver issued")
        records, token = self._target.snapshot_page(request.starting_token, request.max_entries,
                                                    request.source_volume_id)
        return csi_pb2.ListSnapshotsResponse(
            entries=[csi_pb2.ListSnapshotsResponse.Entry(snapshot=_snapshot(r)) for r in records], next_token=token)
