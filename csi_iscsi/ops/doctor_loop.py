"""The doctor's findings as a metric: a plugin runs its side's dry run every --doctor-interval
seconds and sets csi_iscsi_doctor_findings{side,kind}. Doctor itself is a command a person runs;
this is what tells them to run it. A dry run reads only, so it is safe beside the plugin's calls;
what a call in flight holds may show for one pass (an alert waits longer than that)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from csi_iscsi.base.metrics import LazyMetric
from csi_iscsi.ops.findings import Finding

log = logging.getLogger(__name__)

NODE_KINDS = ("session", "record", "map", "state", "mount", "iface")
TARGET_KINDS = ("lio-target", "lio-object", "saved", "data", "record")

FINDINGS = LazyMetric("Gauge", "csi_iscsi_doctor_findings", "What csi-iscsi doctor would report on this host now, "
                      "by kind (run it to see what and why); -1 when the last look failed", ["side", "kind"])


class NotYet(Exception):
    """The plugin cannot look yet (a node without its initiator name): no value, and no backoff."""


class DoctorLoop:
    def __init__(self, side: str, kinds: Sequence[str], find: Callable[[], list[Finding]], interval: float,
                 gauge: Any = None) -> None:
        """gauge: anything labelled (side, kind) with set(); the shared metric by default."""
        gauge = FINDINGS if gauge is None else gauge
        self._side, self._kinds, self._find, self._interval, self._gauge = side, tuple(kinds), find, interval, gauge
        self._stop = threading.Event()
        for kind in self._kinds:
            self._gauge.labels(side, kind).set(0)

    def start(self) -> None:
        threading.Thread(target=self._loop, name=f"doctor-{self._side}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        # A first look at start, so the gauge tells something before the first interval ends. A
        # failed look waits longer each time (up to 8 intervals): a hung command must not pile up.
        failures = 0
        while True:
            failures = 0 if self.tick() is not None else min(failures + 1, 3)
            if self._stop.wait(self._interval * (1 << failures)):
                return

    def tick(self) -> dict[str, int] | None:
        """One look; the counts by kind, None when it failed."""
        try:
            findings = self._find()
        except NotYet as exc:
            log.debug("the %s side's doctor dry run waits: %s", self._side, exc)
            return {}
        except Exception as exc:  # a failed look is a value too: an alert can see it
            log.warning("the %s side's doctor dry run failed (%s: %s)", self._side, type(exc).__name__, exc)
            for kind in self._kinds:
                self._gauge.labels(self._side, kind).set(-1)
            return None
        counts = dict.fromkeys(self._kinds, 0)
        for f in findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        for kind, n in counts.items():
            self._gauge.labels(self._side, kind).set(n)
        if findings:
            log.warning("csi-iscsi doctor would report %d finding(s) on the %s side: %s; run `csi-iscsi doctor` to "
                        "see them", len(findings), self._side,
                        ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n))
        return counts
