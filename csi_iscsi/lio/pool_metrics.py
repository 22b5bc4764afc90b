"""Pool figures for Prometheus, read when scraped: the pools change under volumes the controller
never hears of (writes fill thin pools), so a value cached at the last call would mislead an alert.
One scrape reads at a time; one that comes meanwhile gets what the last one read."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from csi_iscsi.lio.api import PoolInfo
from csi_iscsi.lio.pools import PoolUsage

log = logging.getLogger(__name__)


class PoolFigures(Protocol):
    def pools(self) -> dict[str, PoolInfo]: ...
    def pool_figures(self, name: str) -> tuple[PoolUsage, int, int]: ...


class PoolCollector(Collector):
    def __init__(self, target: PoolFigures) -> None:
        self._target = target
        self._reading = threading.Lock()
        self._last: list[GaugeMetricFamily] = []

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # figures are read at scrape time only, never at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._reading.acquire(blocking=False):
            yield from self._last  # a scrape is reading the pools now (LVM may be slow): no pile-up
            return
        try:
            self._last = self._read()
        finally:
            self._reading.release()
        yield from self._last

    def _read(self) -> list[GaugeMetricFamily]:
        size = GaugeMetricFamily("csi_iscsi_pool_size_bytes", "Size of the pool's storage: the filesystem of a "
                                 "fileio pool, the thin pool of an lvm-thin one", labels=["pool", "type"])
        used = GaugeMetricFamily("csi_iscsi_pool_used_bytes", "Bytes in use in the pool's storage",
                                 labels=["pool", "type"])
        provisioned = GaugeMetricFamily("csi_iscsi_pool_provisioned_bytes",
                                        "Bytes promised to the pool's volumes and snapshots", labels=["pool", "type"])
        available = GaugeMetricFamily("csi_iscsi_pool_available_bytes", "What GetCapacity offers a new volume now",
                                      labels=["pool", "type"])
        data = GaugeMetricFamily("csi_iscsi_thin_pool_data_ratio", "A thin pool's data space in use (0 to 1)",
                                 labels=["pool"])
        metadata = GaugeMetricFamily("csi_iscsi_thin_pool_metadata_ratio",
                                     "A thin pool's metadata space in use (0 to 1)", labels=["pool"])
        errors = GaugeMetricFamily("csi_iscsi_pool_scrape_error", "1 when the pool's figures could not be read "
                                   "at this scrape (the controller's log says why)", labels=["pool"])
        for name, info in sorted(self._target.pools().items()):
            try:
                usage, promised, free = self._target.pool_figures(name)
            except Exception:
                log.exception("reading the figures of pool %s for metrics", name)
                errors.add_metric([name], 1)
                continue
            errors.add_metric([name], 0)
            size.add_metric([name, info.kind], usage.size_bytes)
            used.add_metric([name, info.kind], usage.used_bytes)
            provisioned.add_metric([name, info.kind], promised)
            available.add_metric([name, info.kind], free)
            if usage.data_percent is not None:
                data.add_metric([name], usage.data_percent / 100)
            if usage.metadata_percent is not None:
                metadata.add_metric([name], usage.metadata_percent / 100)
        return [size, used, provisioned, available, data, metadata, errors]
