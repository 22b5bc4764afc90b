"""Self-healing of staged volumes: every interval, each volume staged on a multipath map is
compared with a whole attachment (a session on every portal, the LUN's device on each, every
device under the map), and what is missing is repaired (NodeBackend.heal). Volumes are looked at
from sysfs without their lock; only one that lacks something is locked (try-only: a volume an
RPC holds is left to the next round) and repaired, on its own thread, so a login hanging on one
portal delays no other volume. A volume whose repair failed waits longer each time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from csi_iscsi.base.errors import Aborted, CsiIscsiError
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.host.api import NodeBackend

log = logging.getLogger(__name__)

HEAL_ACTIONS = Counter("csi_iscsi_node_heal_actions_total",
                       "Self-heal steps on staged volumes, by action (record, login, rescan, map; check: a pass "
                       "that failed before any step, or whose steps left the gap; refused: a volume with no "
                       "working path, never logged in again) and result (ok, failed)",
                       ["action", "result"])
for _action in ("record", "login", "rescan", "map"):  # every series from the start: increase() sees the first
    for _result in ("ok", "failed"):
        HEAL_ACTIONS.labels(_action, _result)
HEAL_ACTIONS.labels("check", "failed")
HEAL_ACTIONS.labels("refused", "failed")
# 2**MAX_DOUBLINGS times the interval is past any bound: the exponent stops there.
MAX_DOUBLINGS = 20


class Healer:
    def __init__(self, volumes: Callable[[], NodeBackend], locks: VolumeLocks, interval: float, *,
                 workers: int = 4, max_backoff: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        """volumes: the node's host side, made on first use (raises CsiIscsiError until it can be).
        max_backoff: the longest wait after failed repairs (never below the interval)."""
        self._volumes = volumes
        self._locks = locks
        self._interval = interval
        self._slots = threading.BoundedSemaphore(workers)
        self._max_backoff = max(max_backoff, interval)
        self._clock = clock
        self._guard = threading.Lock()
        self._in_flight: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="self-heal", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the loop outlives any one pass
                log.exception("a self-heal pass failed")

    def tick(self) -> list[threading.Thread]:
        """One pass; returns the repairs it started (threads, for tests to join)."""
        try:
            volumes = self._volumes()
        except CsiIscsiError:
            return []  # the node's host side cannot be made yet: readiness says why
        now = self._clock()
        try:
            every = volumes.heal_gaps_all()
        except Exception as exc:  # sysfs or the state directory unreadable: said each pass, not hidden
            log.warning("self-heal could not look at the staged volumes: %s", exc)
            return []
        started = []
        with self._guard:
            for gone in set(self._failures) - set(every):
                self._failures.pop(gone, None)
                self._retry_at.pop(gone, None)
        for volume_id, gaps in sorted(every.items()):
            with self._guard:
                if volume_id in self._in_flight or now < self._retry_at.get(volume_id, 0.0):
                    continue
                if not gaps:
                    self._failures.pop(volume_id, None)
                    continue
                self._in_flight.add(volume_id)
            thread = threading.Thread(target=self._heal, args=(volumes, volume_id), name=f"heal-{volume_id}",
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had (a pid limit): the next pass tries again
                with self._guard:
                    self._in_flight.discard(volume_id)
                log.warning("self-heal of volume %s could not start: %s", volume_id, exc)
                continue
            started.append(thread)
        return started

    def _heal(self, volumes: NodeBackend, volume_id: str) -> None:
        try:
            with self._slots:
                self._heal_one(volumes, volume_id)
        finally:
            with self._guard:
                self._in_flight.discard(volume_id)

    def _heal_one(self, volumes: NodeBackend, volume_id: str) -> None:
        try:
            with self._locks.hold(volume_id, "self-heal"):
                gaps, repairs = volumes.heal(volume_id)
        except Aborted:
            return  # an RPC is working on the volume: looked at again next round
        except Exception as exc:
            HEAL_ACTIONS.labels("check", "failed").inc()
            log.error("self-heal of volume %s failed: %s", volume_id, exc)
            self._failed(volume_id)
            return
        if gaps:
            log.warning("volume %s is not whole (%s): repairing", volume_id, "; ".join(gaps))
        for step in repairs:
            HEAL_ACTIONS.labels(step.action, "ok" if step.ok else "failed").inc()
            if step.ok:
                log.info("self-heal of volume %s: %s on %s: %s", volume_id, step.action, step.where, step.detail)
            else:
                log.warning("self-heal of volume %s: %s on %s failed: %s", volume_id, step.action, step.where,
                            step.detail)
        if any(not step.ok for step in repairs):
            self._failed(volume_id)
            return
        try:
            left = volumes.heal_gaps(volume_id)
        except Exception as exc:
            left = [f"could not look again: {exc}"]
        if left:  # every step said ok and the gap is still there: not healed, and not tried every interval
            HEAL_ACTIONS.labels("check", "failed").inc()
            log.warning("self-heal of volume %s left it not whole: %s", volume_id, "; ".join(left))
            self._failed(volume_id)
            return
        with self._guard:
            self._failures.pop(volume_id, None)
            self._retry_at.pop(volume_id, None)

    def _failed(self, volume_id: str) -> None:
        """The next try waits twice as long as the last (up to max_backoff): a target that refuses
        the login is not asked every interval."""
        with self._guard:
            failures = self._failures.get(volume_id, 0) + 1
            self._failures[volume_id] = failures
            delay = min(self._interval * 2 ** min(failures, MAX_DOUBLINGS), self._max_backoff)
            self._retry_at[volume_id] = self._clock() + delay
