"""LIO's iSCSI session counters per volume, for Prometheus, read from configfs when scraped:
command and response PDUs, data bytes each way and connection errors, summed over the ACLs
(nodes) with a session to the volume's target. LIO keeps them per session: a re-login starts them
again, which Prometheus' rate() reads as a counter reset."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class TargetSessionCollector(Collector):
    def __init__(self, counters: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """counters: volume id -> LIO counter name (csi_iscsi.lio.objects.SESSION_COUNTERS) -> sum."""
        self._counters = counters

    def describe(self) -> list[CounterMetricFamily]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[CounterMetricFamily]:
        commands = CounterMetricFamily("csi_iscsi_target_iscsi_command_pdus", "SCSI command PDUs the volume's "
                                       "target received, over its current sessions", labels=["volume_id"])
        responses = CounterMetricFamily("csi_iscsi_target_iscsi_response_pdus", "Response PDUs the volume's target "
                                        "sent, over its current sessions", labels=["volume_id"])
        data = CounterMetricFamily("csi_iscsi_target_iscsi_data_bytes", "Data bytes the volume's target received "
                                   "(written to it) or sent (read from it), over its current sessions",
                                   labels=["volume_id", "direction"])
        errors = CounterMetricFamily("csi_iscsi_target_iscsi_connection_errors", "Connection errors (digest, "
                                     "timeout) on the volume's current sessions", labels=["volume_id", "kind"])
        for volume_id, c in sorted(self._counters().items()):
            commands.add_metric([volume_id], c.get("cmd_pdus", 0))
            responses.add_metric([volume_id], c.get("rsp_pdus", 0))
            data.add_metric([volume_id, "received"], c.get("rxdata_octs", 0))
            data.add_metric([volume_id, "sent"], c.get("txdata_octs", 0))
            errors.add_metric([volume_id, "digest"], c.get("conn_digest_errors", 0))
            errors.add_metric([volume_id, "timeout"], c.get("conn_timeout_errors", 0))
        yield from (commands, responses, data, errors)
