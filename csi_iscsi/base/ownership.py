"""One process owns a plugin's state directory.

When a plugin pod is replaced, the new one starts while the old one may still be serving out its
grace period; two processes driving configfs or iscsiadm with their own caches over the same
records would each act on a world the other changes. So each plugin takes an exclusive flock on
<state dir>/<plugin>/.lock before it reads any state, and waits for it, saying so in the log.
The kernel drops the lock when the holder dies however it dies (SIGKILL included), so a crash
never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class StateDirLock:
    def __init__(self, directory: Path, who: str, name: str = LOCK_NAME) -> None:
        """name: the lock file's, in directory (the saved LIO config's writer takes
        <saveconfig>.lock beside it)."""
        self.directory = directory
        self.who = who
        self.name = name
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, log_every: float = 30.0) -> None:
        """Block until this process holds the lock; logs who holds it meanwhile."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            waited_since = time.monotonic()
            last_log = float("-inf")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                now = time.monotonic()
                if now - last_log >= log_every:
                    log.warning("%s: %s is held by another process (%s) for %.0f s; waiting for it to stop "
                                "before serving", self.who, self.path, self._holder(), now - waited_since)
                    last_log = now
                time.sleep(0.2)
            if time.monotonic() - waited_since > 0.5:
                log.info("%s state directory %s is ours after %.1f s", self.who, self.directory,
                         time.monotonic() - waited_since)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({self.who})\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def try_acquire(self) -> bool:
        """Take the lock only if no one holds it (csi-iscsi doctor --fix: the plugin must be stopped);
        False, holding nothing, if someone does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def holder(self) -> str:
        return self._holder()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
