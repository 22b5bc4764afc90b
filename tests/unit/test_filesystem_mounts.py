from __future__ import annotations

from pathlib import Path

import pytest

from csi_iscsi.base.errors import FailedPrecondition, InvalidArgument, Unavailable
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.mounts import MountTable, parse_mountinfo
from csi_iscsi.volume_capabilities import check_fstype, check_mount_flags
from tests.fakes import FakeRunner

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "90 22 253:0 / /var/lib/kubelet/staging\\040dir rw,noatime shared:50 - ext4 /dev/mapper/3600 rw\n"
    "91 22 253:0 / /pods/target ro,relatime shared:51 - ext4 /dev/mapper/3600 ro\n"
)


def test_mountinfo_is_parsed_with_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[1].target == "/var/lib/kubelet/staging dir"
    assert mounts[1].source == "/dev/mapper/3600" and mounts[1].fstype == "ext4"
    assert mounts[2].readonly and not mounts[1].readonly


def fs_with(tmp_path: Path, runner: FakeRunner) -> Filesystems:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    return Filesystems(runner, MountTable(info))


def test_blank_device_gets_a_filesystem(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on(["blkid"], returncode=2)
    device = tmp_path / "blank.img"
    device.write_bytes(bytes(3 * 1024 * 1024))
    assert fs_with(tmp_path, runner).ensure(str(device), "xfs") == ("xfs", True)
    assert runner.calls[-1] == ("mkfs.xfs", "-q", str(device))


@pytest.mark.parametrize("where", [0, 3 * 1024 * 1024 - 1])
def test_data_at_either_end_that_blkid_misses_blocks_mkfs(tmp_path: Path, where: int) -> None:
    runner = FakeRunner()
    runner.on(["blkid"], returncode=2)
    device = tmp_path / "data.img"
    device.write_bytes(bytes(3 * 1024 * 1024))
    with open(device, "r+b") as f:
        f.seek(where)
        f.write(b"\x01")
    with pytest.raises(FailedPrecondition, match="does not recognise"):
        fs_with(tmp_path, runner).ensure(str(device), "ext4")
    assert not any(c[0].startswith("mkfs") for c in runner.calls)


def test_an_unreadable_device_is_unavailable_and_never_formatted(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on(["blkid"], returncode=2)  # what blkid answers when it cannot read
    with pytest.raises(Unavailable, match="never taken for an empty one"):
        fs_with(tmp_path, runner).ensure(str(tmp_path / "gone"), "ext4")
    assert not any(c[0].startswith("mkfs") for c in runner.calls)


@pytest.mark.parametrize("found", ["TYPE=ext4", "PTTYPE=gpt", "TYPE=LVM2_member", "USAGE=raid"])
def test_any_signature_blocks_mkfs(tmp_path: Path, found: str) -> None:
    runner = FakeRunner()
    runner.on(["blkid"], stdout=f"DEVNAME=/dev/x\n{found}\n")
    fs = fs_with(tmp_path, runner)
    with pytest.raises(FailedPrecondition):
        fs.ensure("/dev/x", "xfs")
    assert not any(c[0].startswith("mkfs") for c in runner.calls)


def test_matching_filesystem_is_kept(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on(["blkid"], stdout="TYPE=ext4\n")
    assert fs_with(tmp_path, runner).ensure("/dev/x", "ext4") == ("ext4", False)
    assert [c[0] for c in runner.calls] == ["blkid"]


def test_allow_lists() -> None:
    assert check_fstype("") == "ext4"
    with pytest.raises(InvalidArgument):
        check_fstype("btrfs; rm -rf /")
    assert check_mount_flags(["noatime", "nodev"]) == ["noatime", "nodev"]
    with pytest.raises(InvalidArgument):
        check_mount_flags(["noatime", "exec,suid"])


def test_mount_state_comes_from_mountinfo(tmp_path: Path) -> None:
    fs = fs_with(tmp_path, FakeRunner())
    assert fs.is_mounted("/pods/target") and not fs.is_mounted("/pods/other")
    assert fs.source_of("/pods/target") == "/dev/mapper/3600"


def test_the_selinux_context_kubelet_adds_is_allowed_and_nothing_can_ride_along() -> None:
    """With CSIDriver seLinuxMount: true kubelet adds the pod's context to the stage's mount options
    (as in KEP-1710, quoted); refused, every stage of such a cluster would fail."""
    context = 'context="system_u:object_r:container_file_t:s0:c123,c456"'
    assert check_mount_flags(["noatime", context]) == ["noatime", context]
    assert check_mount_flags(['context="system_u:object_r:container_file_t:s0"']) != []
    for smuggled in ('context="system_u:object_r:container_file_t:s0",exec',
                     'context="a:b:c:s0:c1" ,suid', "context=system_u:object_r:container_file_t:s0",
                     'fscontext="system_u:object_r:container_file_t:s0"'):
        with pytest.raises(InvalidArgument):
            check_mount_flags([smuggled])
