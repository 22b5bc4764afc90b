"""The operator's metrics without a kernel: doctor's findings counted by kind (and -1 when a look
fails), LIO's session counters read from a configfs tree shaped like the kernel's and summed per
volume over its ACLs, a session-less ACL counting nothing."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from csi_iscsi.lio.objects import LioView
from csi_iscsi.lio.session_metrics import TargetSessionCollector
from csi_iscsi.ops.doctor_loop import NODE_KINDS, DoctorLoop
from csi_iscsi.ops.findings import Finding

IQN = "iqn.2026-11.io.csi-iscsi:csi-0123456789abcdef0123456789abcdef"


def test_doctor_findings_are_counted_by_kind_and_a_failed_look_is_minus_one() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("findings", "test", ["side", "kind"], registry=registry)
    found = [Finding("session", "s1", "v", "", ""), Finding("session", "s2", "v", "", ""),
             Finding("map", "m", "w", "", "")]
    results: list[object] = [found]

    def find() -> list[Finding]:
        value = results.pop(0)
        if isinstance(value, Exception):
            raise value
        return value  # type: ignore[return-value]

    loop = DoctorLoop("node", NODE_KINDS, find, 60, gauge=gauge)
    assert {k: registry.get_sample_value("findings", {"side": "node", "kind": k}) for k in NODE_KINDS} == \
        dict.fromkeys(NODE_KINDS, 0.0)  # every series exists before the first look
    loop.tick()
    assert registry.get_sample_value("findings", {"side": "node", "kind": "session"}) == 2
    assert registry.get_sample_value("findings", {"side": "node", "kind": "map"}) == 1
    assert registry.get_sample_value("findings", {"side": "node", "kind": "state"}) == 0
    results.append(OSError("iscsiadm hung"))
    loop.tick()
    assert registry.get_sample_value("findings", {"side": "node", "kind": "session"}) == -1
    results.append([])
    loop.tick()
    assert registry.get_sample_value("findings", {"side": "node", "kind": "session"}) == 0


def test_session_counters_are_summed_per_volume_over_acls_with_a_session(tmp_path: Path) -> None:
    tpg = tmp_path / "iscsi" / IQN / "tpgt_1"
    for initiator, values in (("iqn.1993-08.org.debian:01:a", {"cmd_pdus": "10", "rxdata_octs": "4096"}),
                              ("iqn.1993-08.org.debian:01:b", {"cmd_pdus": "5", "txdata_octs": "512"}),
                              ("iqn.1993-08.org.debian:01:c", {"cmd_pdus": ""})):  # no session: empty files
        stats = tpg / "acls" / initiator / "fabric_statistics" / "iscsi_sess_stats"
        stats.mkdir(parents=True)
        for name, value in values.items():
            (stats / name).write_text(value + "\n")
    view = LioView(tmp_path)
    assert sorted(view.session_stats(IQN), key=str) == sorted(
        [{"cmd_pdus": 10, "rxdata_octs": 4096}, {"cmd_pdus": 5, "txdata_octs": 512}], key=str)
    assert view.session_stats("iqn.2026-11.io.csi-iscsi:none") == []
    registry = CollectorRegistry()
    registry.register(TargetSessionCollector(lambda: {"csi-v": {"cmd_pdus": 15, "rxdata_octs": 4096,
                                                                "txdata_octs": 512}}))
    assert registry.get_sample_value("csi_iscsi_target_iscsi_command_pdus_total", {"volume_id": "csi-v"}) == 15
    assert registry.get_sample_value("csi_iscsi_target_iscsi_data_bytes_total",
                                     {"volume_id": "csi-v", "direction": "received"}) == 4096
    assert registry.get_sample_value("csi_iscsi_target_iscsi_data_bytes_total",
                                     {"volume_id": "csi-v", "direction": "sent"}) == 512
    assert registry.get_sample_value("csi_iscsi_target_iscsi_connection_errors_total",
                                     {"volume_id": "csi-v", "kind": "digest"}) == 0


def test_an_acl_with_a_session_is_told_from_one_without(tmp_path: Path) -> None:
    tpg = tmp_path / "iscsi" / IQN / "tpgt_1"
    for initiator, info in (("iqn.1993-08.org.debian:01:on", "InitiatorName: iqn.1993-08.org.debian:01:on\n"),
                            ("iqn.1993-08.org.debian:01:off", "No active iSCSI Session for Initiator Endpoint: x\n")):
        (tpg / "acls" / initiator).mkdir(parents=True)
        (tpg / "acls" / initiator / "info").write_text(info)
    (tpg / "dynamic_sessions").write_text("")
    assert LioView(tmp_path).sessions(IQN) == ["iqn.1993-08.org.debian:01:on"]
