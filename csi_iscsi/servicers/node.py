"""The CSI Node service: request checks, locks and status codes; the work is the host side's
(csi_iscsi.host.api.NodeBackend)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from csi_iscsi import contract
from csi_iscsi.base.errors import FailedPrecondition, InvalidArgument, NotFound
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.base.redact import quoted
from csi_iscsi.chap import chap_from_secrets
from csi_iscsi.contract import TOPOLOGY_KEY, NodeId, PublishContext, VolumeContext
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.host.api import NodeBackend, TargetInfo
from csi_iscsi.volume_capabilities import READONLY_MODES, check_one

_WWID = re.compile(r"^3[0-9a-f]{16,40}$")

NodeCap = csi_pb2.NodeServiceCapability.RPC
CAPABILITIES = [NodeCap.STAGE_UNSTAGE_VOLUME, NodeCap.GET_VOLUME_STATS, NodeCap.EXPAND_VOLUME,
                NodeCap.VOLUME_CONDITION, NodeCap.SINGLE_NODE_MULTI_WRITER]


@dataclass(frozen=True)
class NodeIdentity:
    node_id: NodeId
    zone: str
    max_volumes: int


class DeferredNode:
    """The node's identity and host side, made on first use. A node whose initiator name cannot be
    read (open-iscsi not installed yet, a control-plane node) keeps the plugin up and not ready,
    saying why, instead of a crash loop; once the name is there it serves without a restart."""

    def __init__(self, make: Callable[[], tuple[NodeIdentity, NodeBackend]]) -> None:
        self._make = make
        self._made: tuple[NodeIdentity, NodeBackend] | None = None
        self._lock = threading.Lock()

    def get(self) -> tuple[NodeIdentity, NodeBackend]:
        """Raises FailedPrecondition with the reason while the node cannot be made."""
        with self._lock:
            if self._made is None:
                try:
                    self._made = self._make()
                except OSError as exc:  # the state directory cannot be made or read
                    raise FailedPrecondition(f"the node plugin cannot start its host side: {exc}") from exc
            return self._made

    def ready(self) -> tuple[bool, str]:
        try:
            self.get()
        except FailedPrecondition as exc:
            return False, str(exc)
        return True, "ready"


def _path(value: str, field: str) -> str:
    """Any absolute path without '..' (kubelet's paths vary by distribution: no directory allow-list)."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not value.startswith("/") or "\0" in value or len(value) > 4096 or ".." in value.split("/"):
        raise InvalidArgument(f"{field} must be an absolute path without '..'")
    return value.rstrip("/") or "/"


def _known_volume_at(volume_id: str, volume_path: str) -> tuple[str, str]:
    """Stats and expand only look a path up: one that cannot be the volume's is unknown, not malformed."""
    _volume_id(volume_id)
    if not volume_path:
        raise InvalidArgument("volume_path is required")
    if not contract.is_volume_id(volume_id):
        raise NotFound(f"volume {quoted(volume_id)} is not a csi-iscsi volume")
    try:
        return volume_id, _path(volume_path, "volume_path")
    except InvalidArgument:
        raise NotFound(f"volume_path {quoted(volume_path)} is not where this volume is published") from None


def _volume_id(value: str) -> str:
    if not value:
        raise InvalidArgument("volume_id is required")
    return value


def _target(volume_id: str, publish: dict[str, str], volume: dict[str, str]) -> TargetInfo:
    def get(key: str) -> str:
        return publish.get(key) or volume.get(key, "")

    iqn, portals, lun, wwid = (get(VolumeContext.TARGET_IQN), get(VolumeContext.PORTALS), get(VolumeContext.LUN),
                               get(VolumeContext.WWID))
    if not contract.is_iqn(iqn) or not iqn.endswith(":" + volume_id):
        raise InvalidArgument(f"publish_context targetIQN {quoted(iqn)} is not this volume's target")
    portal_list = [p for p in portals.split(",") if p]
    if not portal_list or not all(contract.is_portal(p) for p in portal_list):
        raise InvalidArgument(f"publish_context portals {quoted(portals)} must be ip:port[,ip:port...]")
    if not lun.isdigit() or int(lun) > 16383:
        raise InvalidArgument(f"publish_context lun {quoted(lun)} is not a LUN number")
    if not _WWID.fullmatch(wwid) or wwid != contract.wwid(volume_id):
        raise InvalidArgument(f"publish_context wwid {quoted(wwid)} is not this volume's WWID")
    return TargetInfo(iqn, portal_list, int(lun), wwid)


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, identity: NodeIdentity | DeferredNode, volumes: NodeBackend | None = None,
                 locks: VolumeLocks | None = None) -> None:
        """locks: shared with whatever else changes volumes on this node (self-heal)."""
        if isinstance(identity, DeferredNode):
            self._node = identity
        else:
            assert volumes is not None
            made = (identity, volumes)
            self._node = DeferredNode(lambda: made)
        self._locks = locks if locks is not None else VolumeLocks()

    @property
    def volumes(self) -> NodeBackend:
        return self._node.get()[1]

    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest,
                        context: grpc.ServicerContext) -> csi_pb2.NodeStageVolumeResponse:
        volume_id = _volume_id(request.volume_id)
        staging = _path(request.staging_target_path, "staging_target_path")
        if not request.HasField("volume_capability"):
            raise InvalidArgument("volume_capability is required")
        cap = check_one(request.volume_capability)
        if not contract.is_volume_id(volume_id):
            raise NotFound(f"volume {quoted(volume_id)} is not a csi-iscsi volume")
        publish, volume = dict(request.publish_context), dict(request.volume_context)
        target = _target(volume_id, publish, volume)
        chap = chap_from_secrets(publish.get(PublishContext.AUTH, "none"), dict(request.secrets),
                                 "csi.storage.k8s.io/node-stage-secret-name")
        with self._locks.hold(volume_id, "NodeStageVolume"):
            self.volumes.stage(volume_id, target, staging, cap.access_type, cap.fs_type, list(cap.mount_flags), chap)
        return csi_pb2.NodeStageVolumeResponse()

    def NodeUnstageVolume(self, request: csi_pb2.NodeUnstageVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodeUnstageVolumeResponse:
        volume_id = _volume_id(request.volume_id)
        staging = _path(request.staging_target_path, "staging_target_path")
        if contract.is_volume_id(volume_id):
            with self._locks.hold(volume_id, "NodeUnstageVolume"):
                self.volumes.unstage(volume_id, staging)
        return csi_pb2.NodeUnstageVolumeResponse()

    def NodePublishVolume(self, request: csi_pb2.NodePublishVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = _volume_id(request.volume_id)
        target = _path(request.target_path, "target_path")
        if not request.HasField("volume_capability"):
            raise InvalidArgument("volume_capability is required")
        staging = _path(request.staging_target_path, "staging_target_path")
        cap = check_one(request.volume_capability)
        if not contract.is_volume_id(volume_id):
            raise NotFound(f"volume {quoted(volume_id)} is not a csi-iscsi volume")
        readonly = request.readonly or request.volume_capability.access_mode.mode in READONLY_MODES
        with self._locks.hold(volume_id, "NodePublishVolume"):
            self.volumes.publish(volume_id, staging, target, cap.access_type, readonly)
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request: csi_pb2.NodeUnpublishVolumeRequest,
                            context: grpc.ServicerContext) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = _volume_id(request.volume_id)
        target = _path(request.target_path, "target_path")
        if contract.is_volume_id(volume_id):
            with self._locks.hold(volume_id, "NodeUnpublishVolume"):
                self.volumes.unpublish(target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(self, request: csi_pb2.NodeGetVolumeStatsRequest,
                           context: grpc.ServicerContext) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id, path = _known_volume_at(request.volume_id, request.volume_path)
        stats = self.volumes.stats(volume_id, path)
        Unit = csi_pb2.VolumeUsage.Unit
        usage = [csi_pb2.VolumeUsage(unit=Unit.BYTES, total=stats.total_bytes, used=stats.used_bytes,
                                     available=stats.available_bytes)]
        if stats.total_inodes:
            usage.append(csi_pb2.VolumeUsage(unit=Unit.INODES, total=stats.total_inodes, used=stats.used_inodes,
                                             available=stats.available_inodes))
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=usage, volume_condition=csi_pb2.VolumeCondition(abnormal=stats.abnormal, message=stats.message))

    def NodeExpandVolume(self, request: csi_pb2.NodeExpandVolumeRequest,
                         context: grpc.ServicerContext) -> csi_pb2.NodeExpandVolumeResponse:
        volume_id, path = _known_volume_at(request.volume_id, request.volume_path)
        with self._locks.hold(volume_id, "NodeExpandVolume"):
            size = self.volumes.expand(volume_id, path, request.capacity_range.required_bytes)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest,
                    context: grpc.ServicerContext) -> csi_pb2.NodeGetInfoResponse:
        identity, _ = self._node.get()
        return csi_pb2.NodeGetInfoResponse(
            node_id=str(identity.node_id),
            max_volumes_per_node=identity.max_volumes,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: identity.zone}),
        )

    def NodeGetCapabilities(self, request: csi_pb2.NodeGetCapabilitiesRequest,
                            context: grpc.ServicerContext) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=csi_pb2.NodeServiceCapability.RPC(type=c)) for c in CAPABILITIES])
