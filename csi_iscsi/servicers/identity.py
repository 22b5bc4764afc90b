"""The CSI Identity service, the same for the controller and the node plugin."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf.wrappers_pb2 import BoolValue

from csi_iscsi import __version__
from csi_iscsi.contract import DRIVER_NAME
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc

# What the driver as a whole implements; both plugins report the same list (csi-sanity reads it
# from the node's socket). Grows only with what is implemented.
PLUGIN_CAPABILITIES = [
    csi_pb2.PluginCapability(service=csi_pb2.PluginCapability.Service(
        type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE)),
    # Volumes are reachable from the zones the controller serves (--serve-zone), nodes report theirs (--zone).
    csi_pb2.PluginCapability(service=csi_pb2.PluginCapability.Service(
        type=csi_pb2.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
    # lvm-thin volumes grow while published; fileio ones answer FAILED_PRECONDITION until unpublished.
    csi_pb2.PluginCapability(volume_expansion=csi_pb2.PluginCapability.VolumeExpansion(
        type=csi_pb2.PluginCapability.VolumeExpansion.ONLINE)),
]

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], tuple[bool, str]]


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, readiness: ReadinessCheck) -> None:
        self._readiness = readiness
        self._last: tuple[bool, str] | None = None

    def GetPluginInfo(self, request: csi_pb2.GetPluginInfoRequest,
                      context: grpc.ServicerContext) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request: csi_pb2.GetPluginCapabilitiesRequest,
                              context: grpc.ServicerContext) -> csi_pb2.GetPluginCapabilitiesResponse:
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=PLUGIN_CAPABILITIES)

    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        ready, _ = self.readiness()
        return csi_pb2.ProbeResponse(ready=BoolValue(value=ready))

    def readiness(self) -> tuple[bool, str]:
        """Whether the plugin can do its job now, and if not why (Probe and /readyz)."""
        ready, why = self._readiness()
        # Probe answers only a boolean: the reason goes to the log, once per change, not per probe.
        if (ready, why) != self._last:
            if ready:
                log.info("ready")
            else:
                log.warning("not ready: %s", why)
            self._last = (ready, why)
        return ready, why
