"""Filesystems on a volume's device: probe, create only on a device proven blank, mount, unmount.

"Blank" is proven, never assumed: `blkid -p` exits 2, printing nothing, both when it finds no
signature and when it cannot read the device (EIO, ENOENT, EACCES), and mkfs.ext4 run without a
terminal overwrites without asking. So a device is blank only when blkid finds nothing AND the
driver itself read its first and last MiB (O_DIRECT, past any cache) without error and found only
zeros. A read error fails the stage; data it cannot recognise fails it too. Neither formats.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable, Sequence

from csi_iscsi.base.errors import FailedPrecondition, Unavailable
from csi_iscsi.base.runner import Runner
from csi_iscsi.host.mounts import Mount, MountTable
from csi_iscsi.volume_capabilities import SUPPORTED_FSTYPES, check_fstype

log = logging.getLogger(__name__)

BLKID_NOTHING_FOUND = 2  # ...or could not read: never enough on its own
BLKID_AMBIVALENT = 8  # several signatures: certainly not blank
EDGE = 1024 * 1024

# mkfs.xfs refuses a device with any signature unless given -f (never passed). mke2fs has no such
# switch and asks only on a terminal, so the driver's own proof above is what protects ext4.
MKFS: dict[str, tuple[str, ...]] = {
    "ext4": ("mkfs.ext4", "-q"),
    "xfs": ("mkfs.xfs", "-q"),
}
assert set(MKFS) == set(SUPPORTED_FSTYPES)


def read_edges_are_zero(device: str, timeout: float = 30.0) -> bool:
    """Whether the first and last MiB of device hold only zeros, read with O_DIRECT for a block
    device (a regular file, as in tests, through the page cache). Any failure to read raises, and
    so does a read still unanswered after timeout: I/O to a LUN whose backing store fails can
    stay queued in dm-multipath indefinitely, and a thread in such a read cannot be interrupted,
    so the read runs in a thread of its own that is left behind when it hangs."""
    outcome: list[bool | BaseException] = []

    def read() -> None:
        try:
            outcome.append(_edges_are_zero(device))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, name=f"blank-check {device}", daemon=True)
    reader.start()
    reader.join(timeout)
    if not outcome:
        raise Unavailable(f"reading {device} to prove it blank did not finish within {timeout:g} s (I/O queued or "
                          "failing on every path?); it is not formatted")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _edges_are_zero(device: str) -> bool:
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if stat.S_ISBLK(os.fstat(fd).st_mode):
                direct = os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
                os.close(fd)
                fd = direct
            size = os.lseek(fd, 0, os.SEEK_END)
            buffer = mmap.mmap(-1, EDGE)  # page-aligned, as O_DIRECT wants
            with buffer:
                for offset in sorted({0, max(0, (size - EDGE) // 4096 * 4096)}):
                    want = min(EDGE, size - offset)
                    done = os.preadv(fd, [buffer], offset)
                    if done != want:
                        raise OSError(errno.EIO, f"short read: {done} of {want} bytes at offset {offset}")
                    if buffer[:done] != bytes(done):
                        return False
            return True
        finally:
            os.close(fd)
    except OSError as exc:
        raise Unavailable(f"cannot read {device} to prove it blank ({exc.strerror or exc}); it is not formatted: "
                          "a device that cannot be read is never taken for an empty one") from None


class Filesystems:
    def __init__(self, runner: Runner, mounts: MountTable, probe_timeout: float = 30.0) -> None:
        self._runner = runner
        self._mounts = mounts
        self._probe_timeout = probe_timeout  # blkid and the blank proof: a device that does not answer is not blank

    def signature(self, device: str) -> str | None:
        """The filesystem, partition table or other signature blkid finds on device, else None
        (which does not mean blank: see the module's note)."""
        result = self._runner.run(["blkid", "-p", "-o", "export", device],
                                  ok_codes=(0, BLKID_NOTHING_FOUND, BLKID_AMBIVALENT), timeout=self._probe_timeout)
        if result.returncode == BLKID_NOTHING_FOUND:
            return None
        if result.returncode == BLKID_AMBIVALENT:
            return "several signatures"
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        return values.get("TYPE") or values.get("PTTYPE") or values.get("USAGE") or "unknown"

    def ensure(self, device: str, fstype: str, *, on_mkfs: Callable[[], None] = lambda: None,
               resume_mkfs: bool = False) -> tuple[str, bool]:
        """(the filesystem on device, whether it was made now); made only on a device proven blank,
        or (resume_mkfs) one whose only writer since it was proven blank was a mkfs cut short.
        on_mkfs runs just before mkfs, so the caller can record that one is under way."""
        fstype = check_fstype(fstype)
        found = self.signature(device)
        if found is None:
            # The driver's own read must succeed either way: blkid's "nothing" is worth something only
            # when the device can be read.
            zero = read_edges_are_zero(device, self._probe_timeout)
            if resume_mkfs:
                # What a mkfs cut short wrote is not zero and carries no complete signature yet; a
                # second blkid, now that reads are known to work, must still find nothing.
                found = self.signature(device)
            elif not zero:
                raise FailedPrecondition(
                    f"{device} holds data that blkid does not recognise (its first or last MiB is not zero); "
                    "refusing to format it. Check the volume, or wipe it deliberately if it is really unused")
        if found is None:
            on_mkfs()
            self._runner.run([*MKFS[fstype], device], timeout=600)
            return fstype, True
        if found != fstype:
            raise FailedPrecondition(
                f"{device} holds {found!r}, not the requested {fstype!r}; it is left untouched")
        return found, False

    def mount(self, source: str, target: str, fstype: str, flags: Sequence[str] = ()) -> None:
        args = ["mount", "-t", fstype]
        if flags:
            args += ["-o", ",".join(flags)]
        self._runner.run([*args, source, target], timeout=120)

    def bind(self, source: str, target: str, readonly: bool = False) -> None:
        """One mount command even when read-only (util-linux applies ro to the new bind itself), so
        no crash of this process can leave a read-write bind where a read-only one was asked for."""
        self._runner.run(["mount", "--bind", *(["-o", "ro"] if readonly else []), source, target], timeout=60)

    def remount_readonly(self, target: str) -> None:
        self._runner.run(["mount", "-o", "remount,bind,ro", target], timeout=60)

    def umount(self, target: str, most: int = 16) -> None:
        """Unmount every mount stacked on target (at most `most` of them)."""
        for _ in range(most):
            if not self._mounts.at(target):
                return
            self._runner.run(["umount", target], timeout=120)
        if self._mounts.at(target):
            raise FailedPrecondition(f"{target} still has mounts after {most} unmounts; look at it by hand")

    def grow(self, device: str, fstype: str, mountpoint: str) -> None:
        """Grow a mounted filesystem to its (already grown) device, online."""
        if fstype == "xfs":
            self._runner.run(["xfs_growfs", mountpoint], timeout=600)
        else:
            self._runner.run(["resize2fs", device], timeout=600)

    def grow_to_device(self, device: str, fstype: str, mountpoint: str) -> bool:
        """Grows a mounted filesystem that is smaller than its device: a volume made from a smaller
        snapshot or volume carries the source's filesystem (the CSI spec leaves growing it to the
        plugin). The sizes are read from the device and the superblock, so a filesystem at its
        device's size costs no command. A read-only device is left as it is. True when it grew."""
        try:
            fd = os.open(device, os.O_RDONLY)
            try:
                if struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0]:
                    return False
                device_bytes = os.lseek(fd, 0, os.SEEK_END)
                fs_bytes = filesystem_bytes(os.pread(fd, 4096, 0), fstype)
            finally:
                os.close(fd)
        except OSError as exc:
            # The mount just read this superblock; a device that cannot be read now is the next
            # I/O's to report, not a reason to fail a stage that has mounted.
            log.warning("cannot compare %s's size with its filesystem's (%s); not growing it", device, exc)
            return False
        if fs_bytes is None or device_bytes - fs_bytes < GROW_SLACK:
            return False
        self.grow(device, fstype, mountpoint)
        return True

    def mounts_at(self, target: str) -> list[Mount]:
        return self._mounts.at(target)

    def is_mounted(self, target: str) -> bool:
        return bool(self._mounts.at(target))

    def source_of(self, target: str) -> str | None:
        stacked = self._mounts.at(target)
        return stacked[-1].source if stacked else None

    def mounted_from(self, target: str, device: str) -> bool:
        """Whether the top mount at target is device's filesystem (by path, or by device number)."""
        stacked = self._mounts.at(target)
        if not stacked:
            return False
        top = stacked[-1]
        if top.source == device:
            return True
        try:
            st = os.stat(device)
        except OSError:
            return False
        return stat.S_ISBLK(st.st_mode) and top.major_minor == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def same_mount(self, a: Mount, b: Mount) -> bool:
        """Two mounts of the same filesystem subtree (a bind of b, or b itself)."""
        return a.major_minor == b.major_minor and a.root == b.root

    def users(self, device: str, allowed_holders: Sequence[str] = ()) -> list[str]:
        """Why device is in use, if it is: mounted (its filesystem, or its node bound into a pod, on
        devtmpfs or a tmpfs /dev alike), stacked under another device (other than allowed_holders,
        the volume's own maps, and their partition maps while nothing uses those), or held open
        exclusively. Empty when it is not."""
        reasons: list[str] = []
        try:
            st = os.stat(device)
        except OSError:
            return reasons
        if not stat.S_ISBLK(st.st_mode):
            return reasons
        numbers = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        name = os.path.basename(os.path.realpath(device))
        for m in self._mounts.all():
            if m.major_minor == numbers:
                reasons.append(f"mounted at {m.target}")
            elif m.root != "/" and os.path.basename(m.root) == name:
                reasons.append(f"bound at {m.target}")
        holders = _holders(name)
        if holders:
            own = {n for n in (_dm_name(h) for h in [*allowed_holders, name]) if n}
            for holder in holders:
                if holder in allowed_holders:
                    continue
                partition_of_own = any((_dm_name(holder) or "").startswith(n) for n in own)
                if partition_of_own and not self.users(f"/dev/{holder}"):
                    continue  # kpartx's map of a partition of the volume: multipath -f removes it
                reasons.append(f"under {holder}")
            return reasons  # a holder's exclusive claim says nothing more
        try:
            os.close(os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                reasons.append("held open exclusively")
        return reasons


BLKROGET = 0x125E  # linux/fs.h: is the block device read-only
# Less than this between a filesystem and its device is alignment, not a smaller source.
GROW_SLACK = 4 * 1024 * 1024


def filesystem_bytes(head: bytes, fstype: str) -> int | None:
    """The size an ext4 or XFS filesystem gives itself, from the first 4 KiB of its device (the
    superblock); None when that is not the filesystem named."""
    if fstype in ("ext4", "ext3", "ext2") and len(head) >= 2048:
        sb = head[1024:2048]
        if struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
            return None
        blocks = struct.unpack_from("<I", sb, 0x04)[0]
        if struct.unpack_from("<I", sb, 0x60)[0] & 0x80:  # INCOMPAT_64BIT: the high half counts
            blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
        log_block = int(struct.unpack_from("<I", sb, 0x18)[0])
        if log_block > 6:  # ext4 blocks are 1 KiB to 64 KiB: anything else is not a superblock
            return None
        return int(blocks) * (1024 << log_block)
    if fstype == "xfs" and len(head) >= 16 and head[:4] == b"XFSB":
        block_size, data_blocks = struct.unpack_from(">IQ", head, 4)
        return int(block_size) * int(data_blocks)
    return None


def _holders(name: str) -> list[str]:
    try:
        return sorted(os.listdir(f"/sys/class/block/{name}/holders"))
    except OSError:
        return []


def _dm_name(name: str) -> str | None:
    try:
        with open(f"/sys/class/block/{name}/dm/name") as f:
            return f.read().strip()
    except OSError:
        return None
