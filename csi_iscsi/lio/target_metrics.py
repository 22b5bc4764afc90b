"""LIO's counters of each volume's target, for Prometheus, read from configfs when scraped: LUN 0's
commands and bytes read and written (its target port's, so every session and path is counted), and
the target's iSCSI logins by outcome, logouts and session errors. LIO keeps them from the target's
creation: a restore at boot starts them again, which rate() reads as a counter reset."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

MiB = 1 << 20

# (metric label value, LIO group/name)
LOGINS = (("accepted", "iscsi_login_stats/accepts"),
          ("authentication_failed", "iscsi_login_stats/authenticate_fails"),
          ("authorization_failed", "iscsi_login_stats/authorize_fails"),
          ("negotiation_failed", "iscsi_login_stats/negotiate_fails"),
          ("other_failed", "iscsi_login_stats/other_fails"))
LOGOUTS = (("normal", "iscsi_logout_stats/normal_logouts"), ("abnormal", "iscsi_logout_stats/abnormal_logouts"))
ERRORS = (("digest", "iscsi_sess_err/digest_errors"), ("connection", "iscsi_sess_err/cxn_errors"),
          ("format", "iscsi_sess_err/format_errors"))


class TargetCounterCollector(Collector):
    def __init__(self, counters: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """counters: volume id -> LIO "group/name" (csi_iscsi.lio.objects.TARGET_COUNTERS) -> value."""
        self._counters = counters

    def describe(self) -> list[CounterMetricFamily]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[CounterMetricFamily]:
        commands = CounterMetricFamily("csi_iscsi_target_commands", "SCSI commands the volume's LUN received, over "
                                       "every session and path", labels=["volume_id"])
        data = CounterMetricFamily("csi_iscsi_target_data_bytes", "Bytes read from or written to the volume's LUN "
                                   "through its target (whole MiB: LIO counts in MiB)",
                                   labels=["volume_id", "direction"])
        logins = CounterMetricFamily("csi_iscsi_target_iscsi_logins", "iSCSI logins to the volume's target by "
                                     "outcome (authentication_failed: a CHAP mismatch)", labels=["volume_id", "result"])
        logouts = CounterMetricFamily("csi_iscsi_target_iscsi_logouts", "iSCSI logouts from the volume's target "
                                      "(abnormal: a session ended without a logout)", labels=["volume_id", "kind"])
        errors = CounterMetricFamily("csi_iscsi_target_iscsi_session_errors", "Digest, connection and format "
                                     "errors on the volume's target's sessions", labels=["volume_id", "kind"])
        for volume_id, c in sorted(self._counters().items()):
            if not c:
                continue  # the target is gone from LIO: no series rather than zeros that look like idle
            commands.add_metric([volume_id], c.get("scsi_tgt_port/in_cmds", 0))
            data.add_metric([volume_id, "read"], c.get("scsi_tgt_port/read_mbytes", 0) * MiB)
            data.add_metric([volume_id, "write"], c.get("scsi_tgt_port/write_mbytes", 0) * MiB)
            for family, pairs in ((logins, LOGINS), (logouts, LOGOUTS), (errors, ERRORS)):
                for label, key in pairs:
                    family.add_metric([volume_id, label], c.get(key, 0))
        yield from (commands, data, logins, logouts, errors)
