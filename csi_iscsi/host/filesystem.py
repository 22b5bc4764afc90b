"""Filesystems on a volume's device: probe, create only on a blank device, mount, unmount."""

from __future__ import annotations

from collections.abc import Sequence

from csi_iscsi.base.errors import FailedPrecondition
from csi_iscsi.base.runner import Runner
from csi_iscsi.host.mounts import Mount, MountTable
from csi_iscsi.volume_capabilities import SUPPORTED_FSTYPES, check_fstype

BLKID_NOTHING_FOUND = 2

MKFS: dict[str, tuple[str, ...]] = {
    "ext4": ("mkfs.ext4", "-q"),
    "xfs": ("mkfs.xfs", "-q"),
}
assert set(MKFS) == set(SUPPORTED_FSTYPES)


class Filesystems:
    def __init__(self, runner: Runner, mounts: MountTable) -> None:
        self._runner = runner
        self._mounts = mounts

    def signature(self, device: str) -> str | None:
        """The filesystem, partition table or other signature on device, or None if it is blank."""
        result = self._runner.run(["blkid", "-p", "-o", "export", device], ok_codes=(0, BLKID_NOTHING_FOUND))
        if result.returncode == BLKID_NOTHING_FOUND:
            return None
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        return values.get("TYPE") or values.get("PTTYPE") or values.get("USAGE") or "unknown"

    def ensure(self, device: str, fstype: str) -> str:
        """The filesystem on device, made if the device is blank; a different one is an error."""
        fstype = check_fstype(fstype)
        found = self.signature(device)
        if found is None:
            self._runner.run([*MKFS[fstype], device], timeout=600)
            return fstype
        if found != fstype:
            raise FailedPrecondition(
                f"{device} holds {found!r}, not the requested {fstype!r}; it is left untouched")
        return found

    def mount(self, source: str, target: str, fstype: str, flags: Sequence[str] = ()) -> None:
        args = ["mount", "-t", fstype]
        if flags:
            args += ["-o", ",".join(flags)]
        self._runner.run([*args, source, target], timeout=120)

    def bind(self, source: str, target: str, readonly: bool = False) -> None:
        self._runner.run(["mount", "--bind", source, target], timeout=60)
        if readonly:
            self._runner.run(["mount", "-o", "remount,bind,ro", target], timeout=60)

    def umount(self, target: str) -> None:
        """Unmount every mount stacked on target."""
        while self._mounts.at(target):
            self._runner.run(["umount", target], timeout=120)

    def grow(self, device: str, fstype: str, mountpoint: str) -> None:
        """Grow a mounted filesystem to its (already grown) device, online."""
        if fstype == "xfs":
            self._runner.run(["xfs_growfs", mountpoint], timeout=600)
        else:
            self._runner.run(["resize2fs", device], timeout=600)

    def mounts_at(self, target: str) -> list[Mount]:
        return self._mounts.at(target)

    def is_mounted(self, target: str) -> bool:
        return bool(self._mounts.at(target))

    def source_of(self, target: str) -> str | None:
        stacked = self._mounts.at(target)
        return stacked[-1].source if stacked else None
