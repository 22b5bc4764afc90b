from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from csi_iscsi.base.errors import CsiIscsiError, FailedPrecondition
from csi_iscsi.cli import _parser, build_services, main
from csi_iscsi.csi import csi_pb2
from csi_iscsi.host.initiator import read_initiator_name


def test_initiator_name_is_read_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "initiatorname.iscsi"
    f.write_text("## comment\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n")
    assert read_initiator_name(f) == "iqn.1993-08.org.debian:01:abcdef"
    assert read_initiator_name(f, "iqn.2000-01.x:y") == "iqn.2000-01.x:y"
    f.write_text("GenerateName=yes\n")
    with pytest.raises(FailedPrecondition, match="exactly one"):
        read_initiator_name(f)
    f.write_text("InitiatorName=not an iqn\n")
    with pytest.raises(FailedPrecondition, match="not a valid"):
        read_initiator_name(f)
    with pytest.raises(FailedPrecondition, match="cannot read"):
        read_initiator_name(tmp_path / "missing")
    f.write_bytes(b"InitiatorName=iqn.1993-08.org.debian:01:\xff\n")
    with pytest.raises(FailedPrecondition, match="is not text"):
        read_initiator_name(f)


def test_a_node_without_an_initiator_name_stays_up_not_ready_and_serves_once_it_appears(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A control-plane node, or one where open-iscsi is not installed yet: no crash loop. Probe is
    not ready and logs why, NodeGetInfo refuses with the same reason (so the registrar does not
    register the driver there), and the name is picked up when it appears, without a restart."""
    name_file = tmp_path / "initiatorname.iscsi"
    services = build_services(args_for(tmp_path, "node", "--node-name", "w1", "--initiator-name-file",
                                       str(name_file)))
    try:
        assert services.node is not None
        assert not services.identity.Probe(csi_pb2.ProbeRequest(), None).ready.value
        assert f"cannot read the initiator name from {name_file}" in caplog.text
        with pytest.raises(FailedPrecondition, match="cannot read the initiator name") as err:
            services.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), None)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(FailedPrecondition, match="cannot read the initiator name"):
            services.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
                volume_id="csi-" + "0" * 32, volume_path="/x"), None)
        name_file.write_text("InitiatorName=iqn.1993-08.org.debian:01:w1\n")
        info = services.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), None)
        assert info.node_id.endswith("iqn.1993-08.org.debian:01:w1")
    finally:
        for lock in services.owned:
            lock.release()


def test_a_wrong_initiator_iqn_flag_stops_the_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["node", "--endpoint", f"unix://{tmp_path}/n.sock", "--node-name", "w1", "--state-dir",
               str(tmp_path / "state"), "--initiator-iqn", "not an iqn"])
    assert rc == 2
    assert "not a valid" in caplog.text


def test_controller_refuses_bad_portals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["controller", "--endpoint", f"unix://{tmp_path}/c.sock", "--portal", "example.com:3260"])
    assert rc == 2
    assert "not ip:port" in caplog.text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert "csi-iscsi" in capsys.readouterr().out


def args_for(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return _parser().parse_args([*extra, "--state-dir", str(tmp_path / "state")])


def test_a_target_prefix_the_node_would_refuse_stops_the_controller(tmp_path: Path) -> None:
    """One IQN rule: <prefix>:<volume id> must be an IQN the node accepts, or no volume could be staged."""
    for prefix in ("eui.0123456789ABCDEF", "iqn.2026-11.Example.com", "iqn.2026-11.x:"):
        with pytest.raises(CsiIscsiError, match="target-iqn-prefix"):
            build_services(args_for(tmp_path, "controller", "--portal", "10.0.0.1:3260", "--target-iqn-prefix",
                                    prefix, "--pool", f"name=default,type=fileio,path={tmp_path / 'pool'}"))


def test_a_node_id_over_the_spec_limit_stops_the_node(tmp_path: Path) -> None:
    """CSI limits node_id to 256 bytes; a longer one would be refused by every CO call later."""
    with pytest.raises(CsiIscsiError, match="256"):
        build_services(args_for(tmp_path, "node", "--node-name", "n" * 200,
                                "--initiator-iqn", "iqn.2026-11.io.example:" + "x" * 80))


def test_a_second_node_plugin_on_the_same_state_dir_waits_for_the_first(tmp_path: Path) -> None:
    """Finding 6: a replacement pod starting during the old one's grace period must not serve beside it."""
    state = tmp_path / "state"

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        sock = tmp_path / f"{name}.sock"
        proc = subprocess.Popen([sys.executable, "-m", "csi_iscsi", "node", "--endpoint", f"unix://{sock}",
                                 "--node-name", "w1", "--initiator-iqn", "iqn.2026-11.io.example:w1",
                                 "--state-dir", str(state)], stderr=open(tmp_path / f"{name}.log", "wb"))  # noqa: SIM115
        return proc, sock

    def serving(sock: Path, within: float) -> bool:
        channel = grpc.insecure_channel(f"unix:{sock}")
        try:
            grpc.channel_ready_future(channel).result(timeout=within)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            channel.close()

    first, first_sock = start("first")
    second = None
    try:
        assert serving(first_sock, 30)
        second, second_sock = start("second")
        assert not serving(second_sock, 4), "a second plugin served on a state directory another one holds"
        assert "held by another process" in (tmp_path / "second.log").read_text()
        first.terminate()
        first.wait(30)
        assert serving(second_sock, 30)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)



def test_a_state_directory_that_cannot_be_made_is_a_reason_not_a_traceback(tmp_path: Path) -> None:
    from csi_iscsi.servicers.node import DeferredNode

    def make() -> tuple[object, object]:
        raise PermissionError(13, "Permission denied", "/var/lib/csi-iscsi/node/volumes")
    ready, why = DeferredNode(make).ready()  # type: ignore[arg-type]
    assert not ready and "cannot start its host side" in why and "Permission denied" in why
