"""Serving the CSI services on a unix or tcp endpoint, with health, reflection and graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from csi_iscsi.base.errors import InvalidArgument
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.interceptor import CsiInterceptor

log = logging.getLogger(__name__)


def grpc_address(endpoint: str) -> str:
    """unix:///abs/path.sock or tcp://host:port → the address grpc binds."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://"):]
        if not path.startswith("/"):
            raise InvalidArgument(f"unix endpoint {endpoint!r} needs an absolute path (unix:///path.sock)")
        return f"unix:{path}"
    if endpoint.startswith("tcp://"):
        return endpoint[len("tcp://"):]
    raise InvalidArgument(f"endpoint {endpoint!r} must start with unix:// or tcp://")


def _remove_stale_socket(endpoint: str) -> None:
    if not endpoint.startswith("unix://"):
        return
    path = Path(endpoint[len("unix://"):])
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)


@dataclass
class Services:
    identity: csi_pb2_grpc.IdentityServicer
    controller: csi_pb2_grpc.ControllerServicer | None = None
    node: csi_pb2_grpc.NodeServicer | None = None
    owned: list[Any] = field(default_factory=list)  # state directory locks, held while serving
    background: list[Any] = field(default_factory=list)  # loops with start() and stop(): self-heal, doctor dry runs


class CsiServer:
    def __init__(self, services: Services, endpoint: str, *, workers: int = 8) -> None:
        self.endpoint = endpoint
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                   interceptors=[CsiInterceptor()])
        names = [csi_pb2.DESCRIPTOR.services_by_name["Identity"].full_name]
        csi_pb2_grpc.add_IdentityServicer_to_server(services.identity, self._server)  # type: ignore[no-untyped-call]
        if services.controller is not None:
            csi_pb2_grpc.add_ControllerServicer_to_server(services.controller, self._server)  # type: ignore[no-untyped-call]
            names.append(csi_pb2.DESCRIPTOR.services_by_name["Controller"].full_name)
        if services.node is not None:
            csi_pb2_grpc.add_NodeServicer_to_server(services.node, self._server)  # type: ignore[no-untyped-call]
            names.append(csi_pb2.DESCRIPTOR.services_by_name["Node"].full_name)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ["", *names]:
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                            self._server)
        _remove_stale_socket(endpoint)
        self.port = self._server.add_insecure_port(grpc_address(endpoint))
        if endpoint.startswith("tcp://") and self.port == 0:
            raise InvalidArgument(f"cannot listen on {endpoint}")

    def start(self) -> None:
        self._server.start()
        if self.endpoint.startswith("unix://"):
            os.chmod(self.endpoint[len("unix://"):], 0o660)
        log.info("serving CSI on %s", self.endpoint)

    def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to grace seconds."""
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        log.info("stopped serving %s", self.endpoint)

    def serve_until_signal(self, grace: float) -> None:
        done = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("got %s, stopping (grace %g s)", signal.Signals(signum).name, grace)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        # Python runs signal handlers in the main thread only. When the kernel hands SIGTERM to one of
        # gRPC's threads (once calls have been served), an untimed wait here would never wake to run
        # the handler, and the plugin would be killed instead of stopping (seen with podman stop).
        while not done.wait(timeout=0.5):
            pass
        self.stop(grace)
