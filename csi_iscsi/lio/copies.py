"""Long copies of a fileio pool's files (snapshots, and volumes made from a snapshot or a volume)
run here, each in a thread of its own, so that no gRPC worker waits on one: the call that starts
a copy answers "not yet" and its retry finds the copy done, running, or failed.

At most `limit` copies move bytes at once (they read and write the disk LIO serves); the others
wait for a slot. A copy is known by the id of what it makes; the record of that item, on disk,
is what keeps its source from being written meanwhile (see LioTargetService), so that a restart,
which forgets every copy here, does not lift that guard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from csi_iscsi.lio.filecopy import Cancelled

log = logging.getLogger(__name__)

MAX_RUNNING = 2
COPIES = Gauge("csi_iscsi_copies", "Copies of fileio data for snapshots and clones, by state", ["state"])
COPY_FAILURES = Counter("csi_iscsi_copy_failures", "Copies of fileio data that failed")


@dataclass
class CopyJob:
    target_id: str
    source_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""


class Copies:
    def __init__(self, limit: int = MAX_RUNNING) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, CopyJob] = {}
        self._slots = threading.Semaphore(limit)

    def start(self, target_id: str, source_id: str, work: Callable[[threading.Event], Any]) -> CopyJob:
        """The copy making target_id: the one running, or a new one running `work(cancel)`."""
        with self._lock:
            job = self._jobs.get(target_id)
            if job is None:
                job = CopyJob(target_id, source_id)
                thread = threading.Thread(target=self._run, args=(job, work), name=f"copy-{target_id}", daemon=True)
                thread.start()  # before registering: a thread that cannot start leaves no job behind
                self._jobs[target_id] = job
            return job

    def _take_slot(self, job: CopyJob) -> bool:
        """Waits for a slot, but not past a cancel (a delete must not wait for others' copies)."""
        while not job.cancel.is_set():
            if self._slots.acquire(timeout=0.5):
                return True
        return False

    def _run(self, job: CopyJob, work: Callable[[threading.Event], Any]) -> None:
        try:
            with COPIES.labels("waiting").track_inprogress():
                slot = self._take_slot(job)
            if slot:
                try:
                    if not job.cancel.is_set():
                        with COPIES.labels("running").track_inprogress():
                            work(job.cancel)
                finally:
                    self._slots.release()
        except Cancelled:
            log.info("copy of %s into %s stopped", job.source_id, job.target_id)
        except Exception as exc:
            job.error = f"{type(exc).__name__}: {exc}"
            COPY_FAILURES.inc()
            log.exception("copying %s into %s failed", job.source_id, job.target_id)
        finally:
            with self._lock:
                if not job.error and self._jobs.get(job.target_id) is job:
                    del self._jobs[job.target_id]
            job.done.set()

    def failure(self, target_id: str) -> str:
        """The error of a copy that ended with one, forgotten once told ("" if none)."""
        with self._lock:
            job = self._jobs.get(target_id)
            if job is None or not job.done.is_set() or not job.error:
                return ""
            del self._jobs[target_id]
            return job.error

    def running(self, target_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(target_id)
            return job is not None and not job.done.is_set()

    def reading(self, source_id: str) -> str | None:
        """What a running copy of source_id is making, if any."""
        with self._lock:
            return next((j.target_id for j in self._jobs.values()
                         if j.source_id == source_id and not j.done.is_set()), None)

    def stop(self, target_id: str, timeout: float) -> bool:
        """Stops the copy making target_id; False if it is still running after `timeout`."""
        with self._lock:
            job = self._jobs.get(target_id)
        if job is None:
            return True
        job.cancel.set()
        if not job.done.wait(timeout):
            return False
        with self._lock:
            if self._jobs.get(target_id) is job:
                del self._jobs[target_id]
        return True

    def stop_all(self, timeout: float) -> None:
        """At shutdown: the items stay creating and their copies start again at the next start."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            job.done.wait(max(0.0, deadline - time.monotonic()))
