"""Each staged volume's paths for Prometheus, read when scraped (one multipathd call for all):
a path lost behind the plugin's back is seen at the next scrape, not at the next CSI call."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from csi_iscsi.host.api import PathHealth

# The kernel's session states (sysfs): every one is reported, at 0 when no session is in it, so that
# an alert on FAILED sessions sees the rise from zero.
SESSION_STATES = ("LOGGED_IN", "FAILED", "FREE")

log = logging.getLogger(__name__)


class NodePathCollector(Collector):
    def __init__(self, health: Callable[[], list[PathHealth]]) -> None:
        self._health = health
        self._reading = threading.Lock()
        self._last: list[GaugeMetricFamily] = []

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read at scrape time only, never at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._reading.acquire(blocking=False):
            yield from self._last  # a scrape is asking multipathd now: no pile-up behind it
            return
        try:
            self._last = list(self._read())
        finally:
            self._reading.release()
        yield from self._last

    def _read(self) -> Iterator[GaugeMetricFamily]:
        paths = GaugeMetricFamily("csi_iscsi_volume_paths", "A staged volume's paths as multipathd sees them, "
                                  "active or down", labels=["volume_id", "state"])
        portals = GaugeMetricFamily("csi_iscsi_volume_portals", "The paths a staged volume was staged with (its "
                                    "portals)", labels=["volume_id"])
        abnormal = GaugeMetricFamily("csi_iscsi_volume_abnormal", "1 when NodeGetVolumeStats would report the "
                                     "volume abnormal (a path down or missing, the device gone)", labels=["volume_id"])
        error = GaugeMetricFamily("csi_iscsi_node_scrape_error", "1 when the node's paths could not be read at "
                                  "this scrape (the plugin's log says why)")
        try:
            health = self._health()
        except Exception:
            log.exception("reading the volumes' paths for metrics")
            error.add_metric([], 1)
            yield error
            return
        error.add_metric([], 0)
        for h in health:
            paths.add_metric([h.volume_id, "active"], h.active)
            paths.add_metric([h.volume_id, "down"], h.down)
            portals.add_metric([h.volume_id], h.portals)
            abnormal.add_metric([h.volume_id], int(h.abnormal))
        yield from (paths, portals, abnormal, error)


class NodeSessionCollector(Collector):
    """This node's iSCSI sessions to the driver's targets by the kernel's state (sysfs, no
    command): LOGGED_IN, FAILED (the connection is down and iscsid is recovering it), FREE."""

    def __init__(self, states: Callable[[], list[str]]) -> None:
        self._states = states

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("csi_iscsi_node_iscsi_sessions", "This node's iSCSI sessions to csi-iscsi "
                                   "targets, by the kernel's session state", labels=["state"])
        try:
            states = self._states()
        except Exception:
            log.exception("reading the iSCSI sessions for metrics")
            return  # csi_iscsi_node_scrape_error says the node could not be read
        for state in sorted({*SESSION_STATES, *states}):
            family.add_metric([state], states.count(state))
        yield family
