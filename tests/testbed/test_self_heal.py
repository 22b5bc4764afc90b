"""Self-heal on the real kernel: paths taken away behind the driver's back (a session logged out,
its node record deleted, a SCSI device deleted) come back by themselves while fio writes and
verifies, with no I/O error; NodeGetVolumeStats says abnormal meanwhile and normal after; the
metrics count each repair."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers
from .test_node import NODE_METRICS_PORT, Cluster, fio, node_cluster, paths_of, tail, wait_for

CUT = "127.0.0.12:3260"


@pytest.fixture
def healing(tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    yield from node_cluster(tmp_path, initiator_iqn, "--heal-interval", "2")


def heal_actions() -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{NODE_METRICS_PORT}/metrics", timeout=30).read().decode()
    return {f"{s.labels['action']}/{s.labels['result']}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "csi_iscsi_node_heal_actions_total" and s.value}  # every series exists, at 0 at first


def sessions(iqn: str) -> dict[str, tuple[int, str]]:
    """portal -> (session id, state) of the target's sessions, from sysfs."""
    found = {}
    for session in Path("/sys/class/iscsi_session").glob("session*"):
        try:
            if (session / "targetname").read_text().strip() != iqn:
                continue
            sid = int(session.name.removeprefix("session"))
            conn = Path(f"/sys/class/iscsi_connection/connection{sid}:0")
            portal = (conn / "persistent_address").read_text().strip() + ":" + \
                (conn / "persistent_port").read_text().strip()
            found[portal] = (sid, (session / "state").read_text().strip())
        except OSError:
            continue
    return found


def whole(iqn: str, wwid: str) -> bool:
    return (len([s for s in sessions(iqn).values() if s[1] == "LOGGED_IN"]) == 2
            and [p[1:] for p in paths_of(wwid)] == [("active", "ready")] * 2)


def condition(cluster: Cluster, volume: csi_pb2.Volume, target: str) -> csi_pb2.VolumeCondition:
    return cluster.node.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=target), timeout=60).volume_condition


def test_paths_taken_away_behind_the_driver_come_back_under_io(healing: Cluster) -> None:
    cluster = healing
    volume = cluster.create("pvc-heal")
    _, target = cluster.attach(volume)
    iqn, wwid = contract.target_iqn(volume.volume_id), contract.wwid(volume.volume_id)
    assert whole(iqn, wwid) and not condition(cluster, volume, target).abnormal
    job = fio(Path(target) / "fio.dat", 90, "heal")
    try:
        time.sleep(3)
        # 1. A session logged out by hand: its node record stays.
        sid = sessions(iqn)[CUT][0]
        subprocess.run(["iscsiadm", "-m", "session", "-r", str(sid), "-u"], check=True, capture_output=True)
        cut = condition(cluster, volume, target)
        assert cut.abnormal, cut.message
        print(f"after the logout: {cut.message}")
        logged_out = wait_for(lambda: whole(iqn, wwid), 60)
        assert not condition(cluster, volume, target).abnormal
        assert heal_actions().get("login/ok") == 1, heal_actions()

        # 2. The session and its node record both gone: the record is made again (no CHAP here).
        # The record goes first (its files, as a careless cleanup would): iscsiadm refuses to delete a
        # record a session uses, and a logout first would race the next pass.
        address, port = CUT.rsplit(":", 1)
        # <ip>,<port>[,<tpgt>] (no tpgt for a record made without discovery), holding one file per iface.
        records = [p for p in Path(f"/etc/iscsi/nodes/{iqn}").iterdir() if p.name.startswith(f"{address},{port}")]
        assert records, list(Path(f"/etc/iscsi/nodes/{iqn}").iterdir())
        subprocess.run(["rm", "-rf", *map(str, records)], check=True)
        gone = subprocess.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", CUT], capture_output=True, check=False)
        assert gone.returncode == 21, gone
        sid = sessions(iqn)[CUT][0]
        subprocess.run(["iscsiadm", "-m", "session", "-r", str(sid), "-u"], check=True, capture_output=True)
        record_deleted = wait_for(lambda: whole(iqn, wwid), 60)
        assert heal_actions().get("record/ok") == 1 and heal_actions().get("login/ok") == 2, heal_actions()
        record = subprocess.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", CUT], capture_output=True, text=True,
                                check=True).stdout
        assert "node.startup = manual" in record  # made again with the driver's settings

        # 3. The path's SCSI device deleted while its session stays: the LUN is scanned again.
        [device] = [p[0] for p in paths_of(wwid) if Path(f"/sys/block/{p[0]}").exists() and
                    f"session{sessions(iqn)[CUT][0]}/" in str(Path(f"/sys/block/{p[0]}/device").resolve())]
        Path(f"/sys/block/{device}/device/delete").write_text("1")
        device_deleted = wait_for(lambda: whole(iqn, wwid), 60)
        # Each login also scanned its new session's LUN (part of the login); this rescan is the third repair.
        assert heal_actions() == {"login/ok": 2, "record/ok": 1, "rescan/ok": 1}, heal_actions()
    finally:
        output, _ = job.communicate(timeout=300)
    print(f"healed: logout {logged_out:.1f} s, logout + record deleted {record_deleted:.1f} s, "
          f"device deleted {device_deleted:.1f} s (interval 2 s); actions {heal_actions()}")
    assert job.returncode == 0, output
    log = cluster.node_log.read_text(errors="replace")
    assert f"self-heal of volume {volume.volume_id}: login on {CUT}" in log, tail(cluster.node_log)
    cluster.detach(volume)
    assert leftovers(volume.volume_id) == []
    cluster.delete(volume)
