"""Per-volume operation locks: a second call on a volume in flight gets ABORTED, never a half state.

With a lock directory they also hold across processes (an flock on <dir>/<volume id>.lock), so
that `csi-iscsi doctor --fix` never clears what a stage of the running plugin is building, nor
the plugin works on a volume the doctor is clearing. The kernel drops an flock when its holder
dies, however it dies. The files are never removed: unlinking a lock file while another process
has it open would let a third lock a new file of the same name; they are empty, one per volume
ever staged on the node.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csi_iscsi.base.errors import Aborted
from csi_iscsi.contract import is_volume_id

log = logging.getLogger(__name__)


class VolumeLocks:
    def __init__(self, lock_dir: Path | None = None, *, strict: bool = False) -> None:
        """strict: a lock file that cannot be made is a refusal (csi-iscsi doctor must never act
        unexcluded); otherwise the lock holds within this process (the plugin keeps serving)."""
        self._guard = threading.Lock()
        self._busy: dict[str, str] = {}
        self._generations: dict[str, int] = {}
        self._dir = lock_dir
        self._strict = strict
        self._warned = False
        if lock_dir is not None:
            lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextmanager
    def hold(self, volume_id: str, operation: str) -> Iterator[None]:
        with self._guard:
            if volume_id in self._busy:
                raise Aborted(f"an operation ({self._busy[volume_id]}) on volume {volume_id} is in progress; "
                              "retry later")
            self._busy[volume_id] = operation
            self._generations[volume_id] = self._generations.get(volume_id, 0) + 1
        fd = None
        try:
            fd = self._lock_file(volume_id)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # drops the flock
            with self._guard:
                del self._busy[volume_id]

    def _lock_file(self, volume_id: str) -> int | None:
        if self._dir is None or not is_volume_id(volume_id):
            return None
        path = self._dir / f"{volume_id}.lock"
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)  # flock needs no write access
            except FileNotFoundError:  # the directory was removed under the running plugin
                self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if self._strict:
                raise Aborted(f"the lock file of volume {volume_id} cannot be made ({exc}); nothing done") from None
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                raise
            # A state directory that turned read-only must not stop an unpublish or unstage: the
            # lock then holds within this process only, and the doctor's exclusion is lost.
            if not self._warned:
                self._warned = True
                log.warning("volume lock files under %s cannot be made (%s): locks hold within this process only",
                            self._dir, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise Aborted(f"volume {volume_id} is being worked on by another process on this node (csi-iscsi "
                              "doctor, or a second plugin); retry later") from None
            raise
        return fd

    def busy(self, volume_id: str) -> bool:
        with self._guard:
            return volume_id in self._busy

    def generation(self, volume_id: str) -> int:
        """How many calls have held the volume: a reader that saw the same number before and after
        its look, with the volume idle both times, saw no call's half-done work."""
        with self._guard:
            return self._generations.get(volume_id, 0)
