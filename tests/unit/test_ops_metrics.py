"""The operator's metrics without a kernel: doctor's findings counted by kind (and -1 when a look
fails), LIO's target counters read from a configfs tree shaped like the kernel's."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from csi_iscsi.lio.objects import LioView
from csi_iscsi.lio.target_metrics import TargetCounterCollector
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


def test_target_counters_are_read_per_volume_and_a_missing_target_has_no_series(tmp_path: Path) -> None:
    port = tmp_path / "iscsi" / IQN / "tpgt_1" / "lun" / "lun_0" / "statistics" / "scsi_tgt_port"
    port.mkdir(parents=True)
    for name, value in (("in_cmds", "160"), ("read_mbytes", "8"), ("write_mbytes", "9"), ("hs_in_cmds", "1")):
        (port / name).write_text(value + "\n")
    login = tmp_path / "iscsi" / IQN / "fabric_statistics" / "iscsi_login_stats"
    login.mkdir(parents=True)
    (login / "accepts").write_text("2\n")
    (login / "authenticate_fails").write_text("1\n")
    (login / "negotiate_fails").write_text("\n")  # an odd value is not a number: not read
    stats = LioView(tmp_path).target_stats(IQN)
    assert stats == {"scsi_tgt_port/in_cmds": 160, "scsi_tgt_port/read_mbytes": 8, "scsi_tgt_port/write_mbytes": 9,
                     "iscsi_login_stats/accepts": 2, "iscsi_login_stats/authenticate_fails": 1}
    assert LioView(tmp_path).target_stats("iqn.2026-11.io.csi-iscsi:none") == {}
    registry = CollectorRegistry()
    registry.register(TargetCounterCollector(lambda: {"csi-v": stats, "csi-gone": {}}))
    assert registry.get_sample_value("csi_iscsi_target_commands_total", {"volume_id": "csi-v"}) == 160
    assert registry.get_sample_value("csi_iscsi_target_data_bytes_total",
                                     {"volume_id": "csi-v", "direction": "read"}) == 8 << 20
    assert registry.get_sample_value("csi_iscsi_target_data_bytes_total",
                                     {"volume_id": "csi-v", "direction": "write"}) == 9 << 20
    assert registry.get_sample_value("csi_iscsi_target_iscsi_logins_total",
                                     {"volume_id": "csi-v", "result": "authentication_failed"}) == 1
    assert registry.get_sample_value("csi_iscsi_target_iscsi_logins_total",
                                     {"volume_id": "csi-v", "result": "negotiation_failed"}) == 0
    assert registry.get_sample_value("csi_iscsi_target_iscsi_session_errors_total",
                                     {"volume_id": "csi-v", "kind": "digest"}) == 0
    assert registry.get_sample_value("csi_iscsi_target_commands_total", {"volume_id": "csi-gone"}) is None


def test_an_acl_with_a_session_is_told_from_one_without(tmp_path: Path) -> None:
    tpg = tmp_path / "iscsi" / IQN / "tpgt_1"
    for initiator, info in (("iqn.1993-08.org.debian:01:on", "InitiatorName: iqn.1993-08.org.debian:01:on\n"),
                            ("iqn.1993-08.org.debian:01:off", "No active iSCSI Session for Initiator Endpoint: x\n")):
        (tpg / "acls" / initiator).mkdir(parents=True)
        (tpg / "acls" / initiator / "info").write_text(info)
    (tpg / "dynamic_sessions").write_text("")
    assert LioView(tmp_path).sessions(IQN) == ["iqn.1993-08.org.debian:01:on"]
