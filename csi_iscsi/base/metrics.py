"""Metrics of modules that tools share with the plugins, made on first use: `csi-iscsi status`
imports the host modules but serves no metrics, and importing prometheus_client costs it a
second under emulation. A plugin that serves metrics calls declare_all() at start, so that every
series exists (at zero) before the first scrape."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

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

    def labels(self, *values: str) -> Any:
        return self.get().labels(*values)

    def inc(self, amount: float = 1) -> None:
        self.get().inc(amount)


def declare_all() -> None:
    for metric in list(_declared):
        metric.get()
