"""The operator's metrics on the real kernel, scraped over HTTP and checked by value: LIO's
counters of each volume's target against the bytes written and read through the mount and the
logins of its two paths, and
csi_iscsi_doctor_findings on both sides following orphans planted and removed (on the target, only
what is this controller's: a hand-made target is not counted)."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csi_iscsi import contract
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers, scrub_iscsi_and_lio
from .plugins import PORTALS, MiB, controller_args, running
from .test_node import NODE_ARGS, NODE_METRICS_PORT, Cluster, wait_for

CONTROLLER_METRICS_PORT = 19092
STATE = Path("/var/lib/csi-iscsi-ops-metrics-test")
ROOT = Path("/var/tmp/csi-ops-metrics-test")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def findings(port: int, side: str) -> dict[str, float]:
    return {dict(labels)["kind"]: value for (name, labels), value in scrape(port).items()
            if name == "csi_iscsi_doctor_findings" and dict(labels)["side"] == side}


@pytest.fixture
def cluster(tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    pool = ROOT / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            controller = stack.enter_context(running(
                [*controller_args(STATE, [f"name=default,type=fileio,path={pool}"], tmp_path / "save.json"),
                 "--metrics-address", f"127.0.0.1:{CONTROLLER_METRICS_PORT}", "--doctor-interval", "2"],
                tmp_path / "c.sock", tmp_path / "controller.log"))
            node = stack.enter_context(running(
                [*NODE_ARGS, "--state-dir", str(STATE), "--metrics-address", f"127.0.0.1:{NODE_METRICS_PORT}",
                 "--doctor-interval", "2"], tmp_path / "n.sock", tmp_path / "node.log"))
            yield Cluster(controller, node, str(NodeId("testbed", initiator_iqn)), ROOT, tmp_path / "n.sock",
                          tmp_path / "node.log", STATE)
        finally:
            stack.close()
            scrub_iscsi_and_lio(pool_dirs=(pool,))
            subprocess.run(["rm", "-rf", str(ROOT), str(STATE)], check=False)


def test_target_counters_follow_the_bytes_and_logins_and_doctor_findings_follow_orphans(cluster: Cluster) -> None:
    from rtslib_fb import TPG, FabricModule, Target

    volume = cluster.create("pvc-ops-metrics", 64 * MiB)
    vid = volume.volume_id
    _, target = cluster.attach(volume)

    def counter(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"volume_id": vid, **labels}.items())))
        return scrape(CONTROLLER_METRICS_PORT)[key]

    iqn = contract.target_iqn(vid)
    listing = {str(p.relative_to(f"/sys/kernel/config/target/iscsi/{iqn}")): sorted(x.name for x in p.iterdir())
               for p in (Path(f"/sys/kernel/config/target/iscsi/{iqn}/tpgt_1/lun/lun_0/statistics/scsi_tgt_port"),
                         *Path(f"/sys/kernel/config/target/iscsi/{iqn}/fabric_statistics").iterdir())}
    print(f"LIO statistics of the target: {listing}")
    before_write = counter("csi_iscsi_target_data_bytes_total", direction="write")
    before_cmds = counter("csi_iscsi_target_commands_total")
    subprocess.run(["dd", "if=/dev/urandom", f"of={target}/data", "bs=1M", "count=8", "oflag=direct",
                    "conv=fsync"], check=True, capture_output=True)
    written = counter("csi_iscsi_target_data_bytes_total", direction="write") - before_write
    before_read = counter("csi_iscsi_target_data_bytes_total", direction="read")
    subprocess.run(["dd", f"if={target}/data", "of=/dev/null", "bs=1M", "iflag=direct"], check=True,
                   capture_output=True)
    read = counter("csi_iscsi_target_data_bytes_total", direction="read") - before_read
    commands = counter("csi_iscsi_target_commands_total") - before_cmds
    print(f"LIO counters: {written / MiB:.0f} MiB written for 8 MiB written, {read / MiB:.0f} MiB read for 8 MiB "
          f"read, {commands:.0f} commands")
    # Both paths are counted (an ACL's session counters would show only the newest session's half).
    # LIO counts whole MiB, truncated: up to one less than the bytes, plus the filesystem's own writes.
    assert 7 * MiB <= written <= 10 * MiB, listing
    assert 7 * MiB <= read <= 9 * MiB, listing
    assert commands >= 16  # at least one command per MiB each way (a transfer is at most 1 MiB here)
    assert counter("csi_iscsi_target_iscsi_logins_total", result="accepted") == 2  # one per portal
    for result in ("authentication_failed", "authorization_failed", "negotiation_failed", "other_failed"):
        assert counter("csi_iscsi_target_iscsi_logins_total", result=result) == 0, result
    for kind in ("digest", "connection", "format"):
        assert counter("csi_iscsi_target_iscsi_session_errors_total", kind=kind) == 0, kind

    wait_for(lambda: set(findings(CONTROLLER_METRICS_PORT, "target").values()) == {0}
             and set(findings(NODE_METRICS_PORT, "node").values()) == {0}, 30)
    # An orphan on each side. On the target: a volume of this controller whose record is lost (its
    # target, object, two saved entries and file are then this controller's with no record; what
    # another controller or a person owns is left out of the metric). On the node: a record of a
    # driver-form target that no stage state names.
    orphan = cluster.create("pvc-ops-metrics-orphan", 16 * MiB).volume_id
    orphan_iqn = contract.target_iqn(orphan)
    record = STATE / "controller" / "volumes" / f"{orphan}.json"
    kept = record.read_bytes()
    record.unlink()
    subprocess.run(["iscsiadm", "-m", "node", "-o", "new", "-T", orphan_iqn, "-p", PORTALS[0]], check=True,
                   capture_output=True)
    expected = {"lio-target": 1, "lio-object": 1, "saved": 2, "data": 1, "record": 0}
    try:
        seconds = wait_for(lambda: findings(CONTROLLER_METRICS_PORT, "target") == expected
                           and findings(NODE_METRICS_PORT, "node")["record"] == 1, 60)
    except AssertionError:
        raise AssertionError(f"target {findings(CONTROLLER_METRICS_PORT, 'target')}, node "
                             f"{findings(NODE_METRICS_PORT, 'node')}") from None
    print(f"doctor findings seen by both plugins {seconds:.1f} s after the orphans were made")
    assert sum(findings(NODE_METRICS_PORT, "node").values()) == 1
    # A hand-made target (no record, in no saved config of this controller) is not counted.
    TPG(Target(FabricModule("iscsi"), contract.target_iqn(contract.volume_id_for_name("pvc-by-hand")),
               mode="create"), 1, mode="create")
    record.write_bytes(kept)
    subprocess.run(["iscsiadm", "-m", "node", "-T", orphan_iqn, "-o", "delete"], check=True, capture_output=True)
    wait_for(lambda: set(findings(CONTROLLER_METRICS_PORT, "target").values()) == {0}
             and set(findings(NODE_METRICS_PORT, "node").values()) == {0}, 60)
    Target(FabricModule("iscsi"), contract.target_iqn(contract.volume_id_for_name("pvc-by-hand")),
           mode="lookup").delete()
    cluster.controller.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=orphan), timeout=60)

    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(vid) == []
