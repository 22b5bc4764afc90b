"""Pool figures for Prometheus, read when scraped: the pools change under volumes the controller
never hears of (writes fill thin pools), so a value cached at the last call would mislead an alert."""

from __future__ import annotations

import logging
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

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # figures are read at scrape time only, never at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily("csi_iscsi_pool_size_bytes", "Size of the pool's storage: the filesystem of a "
                                 "fileio pool, the thin pool of an lvm-thin one", labels=["pool", "type"])
        used = GaugeMetricFamily("csi_iscsi_pool_used_bytes", "Bytes in use in the pool's storage",
                                 labels=["pool", "type"])
        provisioned = GaugeMetricFamily("csi_iscsi_pool_provisioned_bytes",
                                        "Bytes promised to the pool's volumes and snapshots", labels=["pool", "type"])
        available = GaugeMetricFamily("csi_iscsi_pool_available_bytes", "What GetCapacity offers a new volume now",
                                      labels=["pool", "type"])
        data = GaugeMetricFamily("csi_iscsi_thin_pool_data_percent", "A thin pool's data space in use, in percent",
                                 labels=["pool"])
        metadata = GaugeMetricFamily("csi_iscsi_thin_pool_metadata_percent",
                                     "A thin pool's metadata space in use, in percent", labels=["pool"])
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
                data.add_metric([name], usage.data_percent)
            if usage.metadata_percent is not None:
                metadata.add_metric([name], usage.metadata_percent)
        yield from (size, used, provisioned, available, data, metadata, errors)
