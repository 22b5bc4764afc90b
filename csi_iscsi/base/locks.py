"""Per-volume operation locks: a second call on a volume in flight gets ABORTED, never a half state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from csi_iscsi.base.errors import Aborted


class VolumeLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._busy: dict[str, str] = {}

    @contextmanager
    def hold(self, volume_id: str, operation: str) -> Iterator[None]:
        with self._guard:
            if volume_id in self._busy:
                raise Aborted(f"an operation ({self._busy[volume_id]}) on volume {volume_id} is in progress; "
                              "retry later")
            self._busy[volume_id] = operation
        try:
            yield
        finally:
            with self._guard:
                del self._busy[volume_id]

    @contextmanager
    def try_hold(self, volume_id: str, operation: str) -> Iterator[bool]:
        """Like hold, but yields False instead of raising when the volume is busy: for reads that
        would see a call's half-done work and can as well say "later"."""
        with self._guard:
            busy = volume_id in self._busy
            if not busy:
                self._busy[volume_id] = operation
        if busy:
            yield False
            return
        try:
            yield True
        finally:
            with self._guard:
                del self._busy[volume_id]
