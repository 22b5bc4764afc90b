"""Both plugins served in the VM over unix sockets and reached by a gRPC client and csi-sanity."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi.contract import DRIVER_NAME, NodeId
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc

SANITY = os.environ.get("CSI_SANITY", "/shared/bin/csi-sanity")


def _serve(mode: str, sock: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "csi_iscsi", mode, "--endpoint", f"unix://{sock}", *extra])


def _wait_ready(sock: Path, proc: subprocess.Popen[bytes]) -> grpc.Channel:
    channel = grpc.insecure_channel(f"unix:{sock}")
    grpc.channel_ready_future(channel).result(timeout=30)
    assert proc.poll() is None
    return channel


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    run = tmp_path_factory.mktemp("sockets")
    pool = Path("/var/tmp/csi-iscsi-pool")
    pool.mkdir(parents=True, exist_ok=True)
    socks = {"controller": run / "controller.sock", "node": run / "node.sock"}
    procs = [
        _serve("controller", socks["controller"], "--pool", f"name=default,type=fileio,path={pool}",
               "--portal", "127.0.0.11:3260", "--portal", "127.0.0.12:3260",
               "--state-dir", str(run / "state"), "--saveconfig", str(run / "saveconfig.json")),
        _serve("node", socks["node"], "--node-name", "testbed", "--state-dir", str(run / "state")),
    ]
    try:
        for name, proc in zip(("controller", "node"), procs, strict=True):
            _wait_ready(socks[name], proc).close()
        yield socks
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert proc.wait(timeout=30) == 0, "a plugin did not stop cleanly on SIGTERM"


@pytest.mark.parametrize("mode", ["controller", "node"])
def test_identity_over_the_socket_reports_ready(plugins: dict[str, Path], mode: str) -> None:
    with grpc.insecure_channel(f"unix:{plugins[mode]}") as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
        assert info.name == DRIVER_NAME
        assert info.vendor_version
        # In the VM configfs, the pool, iscsiadm and iscsid are all there: both must be ready.
        assert identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value is True


def test_node_get_info_carries_the_initiator_iqn(plugins: dict[str, Path], initiator_iqn: str) -> None:
    with grpc.insecure_channel(f"unix:{plugins['node']}") as channel:
        info = csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
    assert NodeId.parse(info.node_id) == NodeId("testbed", initiator_iqn)


def test_unimplemented_calls_say_so(plugins: dict[str, Path]) -> None:
    with grpc.insecure_channel(f"unix:{plugins['controller']}") as channel, pytest.raises(grpc.RpcError) as err:
        csi_pb2_grpc.ControllerStub(channel).GetSnapshot(csi_pb2.GetSnapshotRequest(snapshot_id="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_probe_is_not_ready_without_iscsid(tmp_path: Path) -> None:
    sock = tmp_path / "node.sock"
    subprocess.run(["systemctl", "stop", "iscsid.socket", "iscsid.service"], check=True)
    proc = _serve("node", sock, "--node-name", "testbed", "--state-dir", str(tmp_path / "state"))
    try:
        with _wait_ready(sock, proc) as channel:
            probe = csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=10)
        assert probe.ready.value is False
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(["systemctl", "start", "iscsid.socket", "iscsid.service"], check=True)


def _http(path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:19809{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_node_without_an_initiator_name_stays_up_and_says_why(tmp_path: Path) -> None:
    """A control-plane node or one without open-iscsi: the plugin keeps running (no crash loop),
    Probe is not ready, NodeGetInfo refuses with the reason, and the name is used once it exists."""
    sock, name_file, log = tmp_path / "node.sock", tmp_path / "initiatorname.iscsi", tmp_path / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "csi_iscsi", "node", "--endpoint", f"unix://{sock}",
                                 "--node-name", "cp-1", "--state-dir", str(tmp_path / "state"),
                                 "--initiator-name-file", str(name_file), "--health-address", "127.0.0.1:19809"],
                                stdout=out, stderr=out)
    try:
        with _wait_ready(sock, proc) as channel:
            probe = csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=10)
            assert probe.ready.value is False
            # What the chart's liveness probe asks: alive, though not ready; the reason is on /readyz.
            assert _http("/healthz") == (200, "alive\n")
            status, body = _http("/readyz")
            assert status == 503 and body.startswith(f"cannot read the initiator name from {name_file}"), body
            with pytest.raises(grpc.RpcError) as err:
                csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"cannot read the initiator name from {name_file}" in err.value.details()
            assert proc.poll() is None
            name_file.write_text("InitiatorName=iqn.2026-11.io.csi-iscsi:cp-1\n")
            info = csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
            assert info.node_id == str(NodeId("cp-1", "iqn.2026-11.io.csi-iscsi:cp-1"))
            assert csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
            time.sleep(2.5)  # the endpoint answers from a 2 s cache
            assert _http("/readyz") == (200, "ready\n")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "not ready: cannot read the initiator name" in text, text
