from __future__ import annotations

from pathlib import Path

import pytest

from csi_iscsi.base.errors import FailedPrecondition
from csi_iscsi.cli import main
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


def test_node_refuses_to_start_without_a_valid_iqn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["node", "--endpoint", f"unix://{tmp_path}/n.sock", "--node-name", "w1",
               "--initiator-name-file", str(tmp_path / "none")])
    assert rc == 2
    assert "cannot read the initiator name" in caplog.text


def test_controller_refuses_bad_portals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["controller", "--endpoint", f"unix://{tmp_path}/c.sock", "--portal", "example.com:3260"])
    assert rc == 2
    assert "not ip:port" in caplog.text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert "csi-iscsi" in capsys.readouterr().out
