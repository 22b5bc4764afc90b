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
        self._generations: dict[str, int] = {}

    @contextmanager
    def hold(self, volume_id: str, operation: str) -> Iterator[None]:
        with self._guard:
            if volume_id in self._busy:
                raise Aborted(f"an operation ({self._busy[volume_id]}) on volume {volume_id} is in progress; "
                              "retry later")
            self._busy[volume_id] = operation
            self._generations[volume_id] = self._generations.get(volume_id, 0) + 1
        try:
            yield
        finally:
            with self._guard:
                del self._busy[volume_id]

    def busy(self, volume_id: str) -> bool:
        with self._guard:
            return volume_id in self._busy

    def generation(self, volume_id: str) -> int:
        """How many calls have held the volume: a reader that saw the same number before and after
        its look, with the volume idle both times, saw no call's half-done work."""
        with self._guard:
            return self._generations.get(volume_id, 0)
