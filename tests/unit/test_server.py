"""The server in-process: identity, health, error mapping, secret-free logs, graceful stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csi_iscsi import __version__
from csi_iscsi.base.errors import NotFound
from csi_iscsi.contract import DRIVER_NAME
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.server import CsiServer, Services, grpc_address
from csi_iscsi.servicers.identity import IdentityServicer


class ScriptedNode(csi_pb2_grpc.NodeServicer):
    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest, context: object) -> object:
        raise NotFound(f"volume {request.volume_id} is not known to this node")

    def NodeUnstageVolume(self, request: csi_pb2.NodeUnstageVolumeRequest, context: object) -> object:
        raise RuntimeError("boom with /secret/internal/detail")

    def NodeGetVolumeStats(self, request: csi_pb2.NodeGetVolumeStatsRequest, context: object) -> object:
        time.sleep(0.5)
        return csi_pb2.NodeGetVolumeStatsResponse()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[CsiServer, grpc.Channel]]:
    ready = {"value": True}
    services = Services(identity=IdentityServicer(lambda: (ready["value"], "why")), node=ScriptedNode())
    srv = CsiServer(services, f"unix://{tmp_path}/csi.sock")
    srv.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path}/csi.sock")
    srv.ready = ready  # type: ignore[attr-defined]
    yield srv, channel
    channel.close()
    srv.stop(0)


def test_identity(server: tuple[CsiServer, grpc.Channel]) -> None:
    srv, channel = server
    identity = csi_pb2_grpc.IdentityStub(channel)
    info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DRIVER_NAME, __version__)
    assert identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
    srv.ready["value"] = False  # type: ignore[attr-defined]
    probe = identity.Probe(csi_pb2.ProbeRequest())
    assert probe.HasField("ready") and probe.ready.value is False


def test_health_service(server: tuple[CsiServer, grpc.Channel]) -> None:
    _, channel = server
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="csi.v1.Node"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_domain_errors_map_to_their_codes(server: tuple[CsiServer, grpc.Channel]) -> None:
    _, channel = server
    with pytest.raises(grpc.RpcError) as err:
        csi_pb2_grpc.NodeStub(channel).NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id="v1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "v1" in err.value.details()


def test_unexpected_errors_are_internal_without_their_text(server: tuple[CsiServer, grpc.Channel]) -> None:
    _, channel = server
    with pytest.raises(grpc.RpcError) as err:
        csi_pb2_grpc.NodeStub(channel).NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="v1"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "/secret/internal/detail" not in err.value.details()


def test_unimplemented_calls(server: tuple[CsiServer, grpc.Channel]) -> None:
    _, channel = server
    with pytest.raises(grpc.RpcError) as err:
        csi_pb2_grpc.NodeStub(channel).NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_logs_never_hold_secrets(server: tuple[CsiServer, grpc.Channel], caplog: pytest.LogCaptureFixture) -> None:
    _, channel = server
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.RpcError):
        csi_pb2_grpc.NodeStub(channel).NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id="v1", secrets={"chapPassword": "pa55-word-xyz"}))
    assert "NodeStageVolume request" in caplog.text
    assert "pa55-word-xyz" not in caplog.text


def test_graceful_stop_lets_in_flight_calls_finish(tmp_path: Path) -> None:
    srv = CsiServer(Services(identity=IdentityServicer(lambda: (True, "")), node=ScriptedNode()),
                    f"unix://{tmp_path}/g.sock")
    srv.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path}/g.sock")
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["ok"] = csi_pb2_grpc.NodeStub(channel).NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest())
        except grpc.RpcError as exc:
            result["err"] = exc.code()

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.2)
    srv.stop(grace=5)
    t.join()
    channel.close()
    assert "ok" in result, result


def test_stale_socket_is_replaced_and_tcp_works(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    srv = CsiServer(Services(identity=IdentityServicer(lambda: (True, ""))), f"unix://{path}")
    srv.start()
    srv.stop(0)
    tcp = CsiServer(Services(identity=IdentityServicer(lambda: (True, ""))), "tcp://127.0.0.1:0")
    tcp.start()
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        assert csi_pb2_grpc.IdentityStub(ch).GetPluginInfo(csi_pb2.GetPluginInfoRequest()).name == DRIVER_NAME
    tcp.stop(0)


@pytest.mark.parametrize("endpoint", ["/tmp/x.sock", "unix://relative.sock", "http://x"])
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(Exception, match="endpoint"):
        grpc_address(endpoint)


SIGTERM_TO_A_WORKER_THREAD = """
import signal, sys, threading, time
from csi_iscsi.server import CsiServer, Services
from csi_iscsi.servicers.identity import IdentityServicer

srv = CsiServer(Services(identity=IdentityServicer(lambda: (True, ""))), sys.argv[1])

def another_thread_gets_it():
    time.sleep(1.0)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=another_thread_gets_it).start()
srv.serve_until_signal(5)
print("stopped cleanly")
"""


def test_sigterm_taken_by_another_thread_still_stops_the_server(tmp_path: Path) -> None:
    """The kernel may hand a process-directed SIGTERM to any thread (gRPC's, once calls ran);
    found with podman stop, where the plugin waited forever and was killed."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGTERM_TO_A_WORKER_THREAD, f"unix://{tmp_path}/t.sock"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "stopped cleanly" in proc.stdout, proc.stderr
