"""LioView's reads of configfs (the real code, over a tree shaped like the kernel's): every fault
of a volume's export named, a healthy export silent, odd entries tolerated, no secret read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from csi_iscsi.lio.objects import LioView

IQN = "iqn.2026-11.io.csi-iscsi:csi-0123456789abcdef0123456789abcdef"
SO = "csi-0123456789abcdef0123456789abcdef"
INITIATOR = "iqn.1993-08.org.debian:01:aaa"
PORTALS = ["10.0.0.1:3260", "[fd00::2]:3260"]


@pytest.fixture
def cfs(tmp_path: Path) -> Path:
    """A healthy export: enabled TPG without CHAP, both portals, LUN 0 over SO, a read-only ACL."""
    root = tmp_path / "target"
    so = root / "core" / "fileio_7" / SO
    so.mkdir(parents=True)
    tpg = root / "iscsi" / IQN / "tpgt_1"
    (tpg / "attrib").mkdir(parents=True)
    (tpg / "enable").write_text("1\n")
    (tpg / "attrib" / "authentication").write_text("0\n")
    for portal in ("10.0.0.1:3260", "[fd00::2]:3260"):
        (tpg / "np" / portal).mkdir(parents=True)
    (tpg / "lun" / "lun_0").mkdir(parents=True)
    os.symlink(so, tpg / "lun" / "lun_0" / "a1b2c3d4e5")
    acl = tpg / "acls" / INITIATOR
    (acl / "lun_0").mkdir(parents=True)
    (acl / "lun_0" / "write_protect").write_text("1\n")
    (acl / "auth").mkdir()
    (acl / "auth" / "userid").write_text("\n")
    (acl / "auth" / "userid_mutual").write_text("\n")
    (acl / "auth" / "password").write_text("never-read-this\n")
    return root


def faults(cfs: Path, chap: bool = False, grants: dict[str, bool] | None = None) -> list[str]:
    return LioView(cfs).export_faults(SO, IQN, PORTALS, chap, {INITIATOR: True} if grants is None else grants)


def test_a_healthy_export_has_no_fault(cfs: Path) -> None:
    assert faults(cfs) == []
    assert LioView(cfs).acls(IQN) == [(INITIATOR, False, False, True)]


def test_each_fault_is_named(cfs: Path) -> None:
    tpg = cfs / "iscsi" / IQN / "tpgt_1"
    (tpg / "enable").write_text("0\n")
    (tpg / "np" / "[fd00::2]:3260").rmdir()
    (tpg / "acls" / INITIATOR / "lun_0" / "write_protect").write_text("0\n")
    assert faults(cfs, chap=True, grants={INITIATOR: True, "iqn.1993-08.org.debian:01:BBB": False}) == [
        f"target {IQN} is disabled",
        f"target {IQN} does not ask for CHAP, unlike its volume record",
        f"target {IQN} does not listen on portal [fd00::2]:3260",
        "no ACL lets iqn.1993-08.org.debian:01:BBB in, though the volume is published to it",
        f"the ACL of {INITIATOR} is writable, though the volume is published to it read-only",
    ]


def test_lun_0_missing_or_over_another_object_and_the_target_gone(cfs: Path) -> None:
    lun = cfs / "iscsi" / IQN / "tpgt_1" / "lun" / "lun_0"
    (lun / "a1b2c3d4e5").unlink()
    os.symlink(cfs / "core" / "fileio_7", lun / "a1b2c3d4e5")  # fileio_7's name, not SO
    assert faults(cfs) == [f"target {IQN} exports fileio_7 as LUN 0, not {SO}"]
    (lun / "a1b2c3d4e5").unlink()
    assert faults(cfs) == [f"target {IQN} has no LUN 0"]
    import shutil

    shutil.rmtree(cfs / "iscsi" / IQN)
    assert faults(cfs) == [f"LIO has no target {IQN}"]
    assert not (cfs / "iscsi" / IQN).exists()  # a read never creates


def test_chap_on_is_told_from_user_names_and_odd_entries_do_not_raise(cfs: Path) -> None:
    acl = cfs / "iscsi" / IQN / "tpgt_1" / "acls" / INITIATOR
    (acl / "auth" / "userid").write_text("someone\n")
    (acl / "auth" / "userid_mutual").write_text("target-side\n")
    (cfs / "iscsi" / IQN / "tpgt_1" / "attrib" / "authentication").write_text("1\n")
    (cfs / "iscsi" / IQN / "tpgt_1" / "acls" / "not a wwn").mkdir()
    (cfs / "iscsi" / IQN / "tpgt_1" / "acls" / "stray-file").write_text("")
    (cfs / "iscsi" / IQN / "tpgt_1" / "np" / "garbage").mkdir()
    view = LioView(cfs)
    assert view.acls(IQN) == [(INITIATOR, True, True, True), ("not a wwn", False, False, False)]
    assert view.export_faults(SO, IQN, PORTALS, True, {INITIATOR: True}) == []


def test_rtslib_2_2_s_renamed_not_in_configfs_error_is_a_missing_object(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """rtslib-fb 2.2 has RTSLibNotInCFSError and no RTSLibNotInCFS: a missing target must still read
    as missing, not as an AttributeError."""
    from types import SimpleNamespace

    from csi_iscsi.lio import objects

    class RTSLibError(Exception):
        pass

    class RTSLibNotInCFSError(RTSLibError):
        pass

    def missing(*args: object, **kwargs: object) -> None:
        raise RTSLibNotInCFSError("not in configfs")

    fake = SimpleNamespace(RTSLibError=RTSLibError, RTSLibNotInCFSError=RTSLibNotInCFSError,
                           FabricModule=lambda name: object(), Target=missing, TPG=missing)
    monkeypatch.setattr(objects, "_rtslib", lambda: fake)
    lio = objects.Lio(tmp_path)
    assert not lio.target_exists(IQN)
    assert lio.initiators(IQN) == []
    lio.delete_target(IQN)  # nothing to delete: no error
