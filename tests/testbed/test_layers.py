"""The target and host layers on the real kernel: a LUN exported by our LIO code, attached over two
portals by our host code, one multipath map found by the WWID we set, data written and read back,
and nothing left behind afterwards."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from csi_iscsi import contract
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.host.attach import Attacher
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from csi_iscsi.host.mounts import MountTable
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.lio.objects import Lio

from .conftest import PORTALS
from .conftest import leftovers as initiator_leftovers

SIZE = 256 * 1024 * 1024


def leftovers(volume_id: str, iqn: str, wwid: str, mountpoint: Path) -> list[str]:
    """Everything of this volume still present on the target or the initiator."""
    lio = Lio()
    found = [f"storage object {volume_id}"] if lio.storage_object_exists(volume_id) else []
    found += [f"target {iqn}"] if lio.target_exists(iqn) else []
    return found + initiator_leftovers(volume_id, [str(mountpoint)])


def test_export_attach_multipath_mkfs_mount_and_leave_nothing(pool_dir: Path, initiator_iqn: str,
                                                             tmp_path: Path) -> None:
    volume_id = contract.volume_id_for_name(f"testbed-layers-{os.getpid()}")
    iqn = contract.target_iqn(volume_id)
    wwid = contract.wwid(volume_id)
    backing = pool_dir / f"{volume_id}.img"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()

    runner = SubprocessRunner()
    lio = Lio()
    iscsiadm = Iscsiadm(runner)
    multipath = Multipath(runner)
    attacher = Attacher(iscsiadm, Scsi(), multipath, SessionSettings(replacement_timeout=5))
    fs = Filesystems(runner, MountTable())

    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        with open(backing, "wb") as f:
            f.truncate(SIZE)
        lio.ensure_fileio(volume_id, str(backing), SIZE, contract.unit_serial(volume_id))
        lio.ensure_target(iqn, PORTALS, volume_id, chap=False)
        lio.grant(iqn, initiator_iqn)
        timings["export"] = time.monotonic() - t

        t = time.monotonic()
        attachment = attacher.attach(iqn, PORTALS, 0, wwid)
        timings["attach"] = time.monotonic() - t
        assert attachment.device == f"/dev/mapper/{wwid}"
        assert len(attachment.paths) == 2, attachment
        assert attachment.failed_portals == ()
        assert sorted(multipath.slaves(wwid)) == sorted(attachment.paths)
        for path in attachment.paths:
            assert Scsi().wwid(path) == wwid

        t = time.monotonic()
        assert fs.ensure(attachment.device, "ext4")[0] == "ext4"
        fs.mount(attachment.device, str(mountpoint), "ext4")
        timings["mkfs+mount"] = time.monotonic() - t
        data = os.urandom(8 * 1024 * 1024)
        (mountpoint / "data").write_bytes(data)
        fs.umount(str(mountpoint))
        # A second ensure must find the filesystem and leave it alone.
        assert fs.ensure(attachment.device, "ext4")[0] == "ext4"
        fs.mount(attachment.device, str(mountpoint), "ext4")
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
        read_back = (mountpoint / "data").read_bytes()
        assert hashlib.sha256(read_back).hexdigest() == hashlib.sha256(data).hexdigest()

        t = time.monotonic()
        fs.umount(str(mountpoint))
        attacher.detach(iqn, 0, wwid)
        timings["detach"] = time.monotonic() - t
    finally:
        if fs.is_mounted(str(mountpoint)):
            fs.umount(str(mountpoint))
        attacher.detach(iqn, 0, wwid)
        lio.revoke(iqn, initiator_iqn)
        lio.delete_target(iqn)
        lio.delete_storage_object(volume_id)
        backing.unlink(missing_ok=True)
    print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    assert leftovers(volume_id, iqn, wwid, mountpoint) == []


def test_one_dead_portal_does_not_fail_the_attach(pool_dir: Path, initiator_iqn: str) -> None:
    volume_id = contract.volume_id_for_name(f"testbed-dead-portal-{os.getpid()}")
    iqn = contract.target_iqn(volume_id)
    wwid = contract.wwid(volume_id)
    backing = pool_dir / f"{volume_id}.img"
    runner = SubprocessRunner()
    lio = Lio()
    attacher = Attacher(Iscsiadm(runner), Scsi(), Multipath(runner),
                        SessionSettings(login_timeout=3, login_retries=0, replacement_timeout=5))
    dead = "127.0.0.13:3260"  # nothing listens there
    try:
        with open(backing, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        lio.ensure_fileio(volume_id, str(backing), 64 * 1024 * 1024, contract.unit_serial(volume_id))
        lio.ensure_target(iqn, PORTALS[:1], volume_id, chap=False)
        lio.grant(iqn, initiator_iqn)
        attachment = attacher.attach(iqn, [PORTALS[0], dead], 0, wwid)
        assert attachment.failed_portals == (dead,)
        assert len(attachment.paths) == 1
    finally:
        attacher.detach(iqn, 0, wwid)
        lio.revoke(iqn, initiator_iqn)
        lio.delete_target(iqn)
        lio.delete_storage_object(volume_id)
        backing.unlink(missing_ok=True)
    assert leftovers(volume_id, iqn, wwid, Path("/nonexistent")) == []


@pytest.mark.parametrize("fstype", ["xfs"])
def test_existing_filesystem_is_never_reformatted(pool_dir: Path, fstype: str) -> None:
    runner = SubprocessRunner()
    fs = Filesystems(runner, MountTable())
    image = pool_dir / "fs-probe.img"
    with open(image, "wb") as f:
        f.truncate(300 * 1024 * 1024)
    try:
        assert fs.signature(str(image)) is None
        assert fs.ensure(str(image), fstype) == (fstype, True)
        before = hashlib.sha256(image.read_bytes()).hexdigest()
        with pytest.raises(Exception, match="left untouched"):
            fs.ensure(str(image), "ext4")
        assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    finally:
        image.unlink(missing_ok=True)
