"""Metrics of modules that tools share with the plugins, made on first use: `csi-iscsi status`
imports the host modules but serves no metrics, and importing prometheus_client costs it a
second under emulation. A plugin that serves metrics calls declare_all() at start, so that every
series exists (at zero) before the first scrape."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

_declared: list[LazyMetric] = []
_lock = threading.Lock()


class LazyMetric:
    def __init__(self, kind: str, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self._kind = kind  # a prometheus_client class name: Counter, Gauge, Histogram
        self._args = (name, documentation, tuple(labelnames))
        self._metric: Any = None
        _declared.append(self)

    def get(self) -> Any:
        with _lock:
            if self._metric is None:
                import prometheus_client

                name, documentation, labelnames = self._args
                self._metric = getattr(prometheus_client, self._kind)(name, documentation, labelnames)
            return self._metric

    def _live(self) -> Any:
        """The metric, or a stand-in that counts nothing in a process that never loaded
        prometheus_client (a tool: nothing would read the count). Counting never fails the work
        it counts."""
        if self._metric is None and "prometheus_client" not in sys.modules:
            return _NOTHING
        try:
            return self.get()
        except Exception:
            log.exception("metric %s cannot be made; not counted", self._args[0])
            return _NOTHING

    def labels(self, *values: str) -> Any:
        return self._live().labels(*values)

    def inc(self, amount: float = 1) -> None:
        self._live().inc(amount)


class _Nothing:
    def labels(self, *values: str) -> _Nothing:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass


_NOTHING = _Nothing()


def declare_all() -> None:
    for metric in list(_declared):
        metric.get()
