"""Copies of a fileio pool's files for snapshots and clones.

A reflink (FICLONE: XFS with reflink=1, Btrfs) shares the source's extents: instant, and atomic
against LIO's writes, so it is a crash-consistent image even of a volume in use. Without it the
bytes are copied, holes kept (only the extents SEEK_DATA finds are read). Such a copy takes time
and sees writes made while it runs, so it is consistent only of a volume no node can write.
`cp --reflink=auto --sparse=always` does the same copy, but says neither which of the two it made
nor how far it is, and cannot be stopped cleanly; hence this module.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
CHUNK = 64 * 1024 * 1024
PROGRESS_EVERY = 10.0  # seconds between progress lines in the log
# What FICLONE answers when this filesystem, or this pair of files, cannot share extents.
NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS}


class Cancelled(Exception):
    """The copy was stopped (its snapshot is being deleted)."""


def try_reflink(src: Path, dst: Path) -> bool:
    """dst (created, or truncated) shares src's extents; False, with dst removed, where the
    filesystem cannot do that."""
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, fin.fileno())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            dst.unlink(missing_ok=True)
            if exc.errno in NO_REFLINK:
                return False
            raise
        os.close(fd)
    return True


def sparse_copy(src: Path, dst: Path, cancel: threading.Event | None = None, label: str = "") -> int:
    """Copy src's data extents into dst (created, or truncated), holes left as holes; returns the
    bytes copied. Checks `cancel` between chunks and logs progress."""
    copied = 0
    start = last = time.monotonic()
    with open(src, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            offset = 0
            while offset < size:
                try:
                    data = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # nothing but a hole to the end
                        break
                    raise
                hole = os.lseek(fin.fileno(), data, os.SEEK_HOLE)
                offset = data
                while offset < hole:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"copy of {src.name} stopped at {offset} of {size} bytes")
                    n = os.copy_file_range(fin.fileno(), fd, min(CHUNK, hole - offset), offset, offset)
                    if n == 0:
                        raise OSError(errno.EIO, f"{src} ended at {offset} bytes while {size} were expected")
                    offset += n
                    copied += n
                    now = time.monotonic()
                    if now - last >= PROGRESS_EVERY:
                        last = now
                        log.info("%s: copied %d MiB of %s (at byte %d of %d), %.0f s so far", label or dst.name,
                                 copied >> 20, src.name, offset, size, now - start)
            os.fsync(fd)
        finally:
            os.close(fd)
    return copied
