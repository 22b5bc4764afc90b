"""The CSI Controller service."""

from __future__ import annotations

import grpc

from csi_iscsi.csi import csi_pb2, csi_pb2_grpc


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    def ControllerGetCapabilities(self, request: csi_pb2.ControllerGetCapabilitiesRequest,
                                  context: grpc.ServicerContext) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[])
