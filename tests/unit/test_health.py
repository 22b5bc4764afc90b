"""The plugin's own /healthz and /readyz: liveness never follows readiness."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_iscsi.health import HealthServer, grpc_answers
from csi_iscsi.server import CsiServer, Services
from csi_iscsi.servicers.identity import IdentityServicer


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def not_ready_plugin(tmp_path: Path) -> Iterator[tuple[str, IdentityServicer]]:
    identity = IdentityServicer(lambda: (False, "cannot read the initiator name from /etc/iscsi/x"))
    server = CsiServer(Services(identity=identity), f"unix://{tmp_path}/p.sock")
    server.start()
    yield f"unix://{tmp_path}/p.sock", identity
    server.stop(0)


def test_a_plugin_that_is_not_ready_is_still_alive(not_ready_plugin: tuple[str, IdentityServicer]) -> None:
    """A dependency outside the pod (iscsid, the initiator name) must not restart the plugin."""
    endpoint, identity = not_ready_plugin
    health = HealthServer("127.0.0.1:0", lambda: grpc_answers(endpoint), identity.readiness, ttl=0)
    health.start()
    try:
        assert get(health.port, "/healthz") == (200, "alive\n")
        assert get(health.port, "/readyz") == (503, "cannot read the initiator name from /etc/iscsi/x\n")
        assert get(health.port, "/other")[0] == 404
    finally:
        health.stop()


def test_a_plugin_whose_grpc_server_does_not_answer_is_not_alive(tmp_path: Path) -> None:
    health = HealthServer("127.0.0.1:0", lambda: grpc_answers(f"unix://{tmp_path}/none.sock", timeout=1),
                          lambda: (True, "ready"), ttl=0)
    health.start()
    try:
        status, body = get(health.port, "/healthz")
        assert status == 503 and "did not answer" in body
    finally:
        health.stop()


def test_a_readiness_check_that_breaks_is_a_reason_and_never_touches_liveness(tmp_path: Path) -> None:
    """A check that raises (an initiator-name file that is not UTF-8, say) answers 503 with what
    broke; liveness does not run readiness checks at all."""
    def broken() -> tuple[bool, str]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    identity = IdentityServicer(broken)
    server = CsiServer(Services(identity=identity), f"unix://{tmp_path}/p.sock")
    server.start()
    health = HealthServer("127.0.0.1:0", lambda: grpc_answers(f"unix://{tmp_path}/p.sock"), identity.readiness, ttl=0)
    health.start()
    try:
        assert get(health.port, "/healthz") == (200, "alive\n")
        assert get(health.port, "/readyz") == (503, "the check failed: UnicodeDecodeError\n")
    finally:
        health.stop()
        server.stop(0)


def test_a_tcp_endpoint_on_a_wildcard_address_is_probed_on_loopback() -> None:
    identity = IdentityServicer(lambda: (True, "ready"))
    server = CsiServer(Services(identity=identity), "tcp://0.0.0.0:0")
    server.start()
    try:
        assert grpc_answers(f"tcp://0.0.0.0:{server.port}") == (True, "alive")
    finally:
        server.stop(0)


def test_the_endpoint_binds_ipv6_loopback_too() -> None:
    try:
        health = HealthServer("[::1]:0", lambda: (True, "alive"), lambda: (True, "ready"))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    health.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{health.port}/healthz", timeout=10) as response:
            assert response.status == 200
    finally:
        health.stop()
