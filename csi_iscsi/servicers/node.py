"""The CSI Node service."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from csi_iscsi.contract import TOPOLOGY_KEY, NodeId
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc


@dataclass(frozen=True)
class NodeIdentity:
    node_id: NodeId
    zone: str
    max_volumes: int


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, identity: NodeIdentity) -> None:
        self._identity = identity

    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest,
                    context: grpc.ServicerContext) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=str(self._identity.node_id),
            max_volumes_per_node=self._identity.max_volumes,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: self._identity.zone}),
        )

    def NodeGetCapabilities(self, request: csi_pb2.NodeGetCapabilitiesRequest,
                            context: grpc.ServicerContext) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[])
