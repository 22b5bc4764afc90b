"""csi-iscsi doctor on the real kernel: each kind of orphan planted beside a live volume under fio
verify; the dry run reports them and changes nothing, --fix clears exactly them, and the live
volume never notices."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2
from csi_iscsi.host.stage_state import StageState, StageStateStore

from .conftest import leftovers
from .plugins import PORTALS, mount_cap
from .test_node import Cluster, fio, node_cluster, paths_of, wait_for
from .test_self_heal import sessions, whole


@pytest.fixture
def doctoring(tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    yield from node_cluster(tmp_path, initiator_iqn)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def doctor(cluster: Cluster, *flags: str) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run([sys.executable, "-m", "csi_iscsi", "doctor", "--json", "--state-dir", str(cluster.state),
                           "--node-name", "testbed", *flags], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)["findings"]


def logged_in_by_hand(cluster: Cluster, name: str) -> csi_pb2.Volume:
    """A volume published to this node and logged in by hand, as an admin testing a target would:
    its sessions, SCSI devices and map are there, and no stage state names it."""
    volume = cluster.create(name)
    cluster.controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=cluster.node_id, volume_capability=mount_cap()), timeout=60)
    iqn, wwid = contract.target_iqn(volume.volume_id), contract.wwid(volume.volume_id)
    sh("multipath", "-a", wwid)
    for portal in PORTALS:
        sh("iscsiadm", "-m", "node", "-o", "new", "-T", iqn, "-p", portal)
        sh("iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--login")
    wait_for(lambda: len(paths_of(wwid)) == 2 and Path(f"/dev/mapper/{wwid}").exists(), 60)
    return volume


def test_doctor_finds_and_clears_each_orphan_and_leaves_a_live_volume_alone(doctoring: Cluster) -> None:
    cluster = doctoring
    live = cluster.create("pvc-doctor-live")
    _, target = cluster.attach(live)
    live_iqn, live_wwid = contract.target_iqn(live.volume_id), contract.wwid(live.volume_id)
    live_sessions = sessions(live_iqn)

    # 1. Sessions, devices and a map of a driver target that no state names.
    by_hand = logged_in_by_hand(cluster, "pvc-doctor-sessions")
    # 2. A map left with no paths: what a detach cut short after its devices went leaves.
    cut = logged_in_by_hand(cluster, "pvc-doctor-map")
    cut_iqn, cut_wwid = contract.target_iqn(cut.volume_id), contract.wwid(cut.volume_id)
    slaves = Path(f"/sys/block/{Path(f'/dev/mapper/{cut_wwid}').resolve().name}/slaves")
    # multipathd flushes a map when its last path goes, unless the map is open then: held open
    # while its devices go, as a process reading it during a cut-short detach would.
    with open(f"/dev/mapper/{cut_wwid}", "rb"):
        for device, _, _ in paths_of(cut_wwid):
            Path(f"/sys/block/{device}/device/delete").write_text("1")
        wait_for(lambda: not list(slaves.iterdir()), 60)
    sh("iscsiadm", "-m", "node", "-T", cut_iqn, "--logout")
    sh("iscsiadm", "-m", "node", "-T", cut_iqn, "-o", "delete")
    time.sleep(2)
    assert Path(f"/dev/mapper/{cut_wwid}").exists() and not list(slaves.iterdir()), "no pathless map was left"
    # Doctor flushes only the map of a volume the plugin staged here once, which left its lock file:
    # another LIO disk's map has the same WWID prefix.
    (cluster.state / "node" / "locks" / f"{cut.volume_id}.lock").touch()
    # 3. A node record alone, of a target of the driver's form.
    record_only = contract.volume_id_for_name("pvc-doctor-record")
    sh("iscsiadm", "-m", "node", "-o", "new", "-T", contract.target_iqn(record_only), "-p", PORTALS[0])
    # 4. A stage state of a stage that failed and was never retried, with nothing on the host.
    stale = contract.volume_id_for_name("pvc-doctor-state")
    store = StageStateStore(cluster.state / "node" / "volumes", readonly=True)
    store.put(StageState(stale, contract.target_iqn(stale), PORTALS, 0, contract.wwid(stale), "/nowhere", "mount",
                         "ext4"))

    job = fio(Path(target) / "fio.dat", 60, "doctor")
    time.sleep(3)
    started = time.monotonic()
    code, found = doctor(cluster)
    dry_seconds = time.monotonic() - started
    kinds = sorted((f["kind"], f["volume_id"]) for f in found)
    assert code == 1
    assert kinds == sorted([("session", by_hand.volume_id)] * 2 + [("map", cut.volume_id)]
                           + [("record", record_only)] + [("state", stale)]), json.dumps(found, indent=1)
    assert [f["subject"] for f in found if f["kind"] == "map"] == [cut_wwid]
    assert len(sessions(contract.target_iqn(by_hand.volume_id))) == 2  # a dry run changes nothing

    # A process reading the hand-made volume's path (not exclusively, as dd or a VM would): it is
    # in use, and --fix leaves it while clearing the rest.
    [device] = [p[0] for p in paths_of(contract.wwid(by_hand.volume_id))][:1]
    with open(f"/dev/{device}", "rb") as held:
        reader = subprocess.Popen(["sleep", "600"], stdin=held)
    try:
        code, partly = doctor(cluster, "--fix")
    finally:
        reader.kill()
        reader.wait()
    left = {f["result"] for f in partly if f["volume_id"] == by_hand.volume_id}
    assert code == 1 and len(left) == 1 and f"{device} open by sleep" in left.pop(), json.dumps(partly, indent=1)
    assert {f["result"] for f in partly if f["volume_id"] != by_hand.volume_id} == {"cleared"}, partly
    assert len(sessions(contract.target_iqn(by_hand.volume_id))) == 2

    started = time.monotonic()
    code, fixed = doctor(cluster, "--fix")
    fix_seconds = time.monotonic() - started
    assert code == 0 and {f["result"] for f in fixed} == {"cleared"}, json.dumps(fixed, indent=1)
    assert [f["kind"] for f in fixed] == ["session", "session"]
    assert doctor(cluster) == (0, [])
    output, _ = job.communicate(timeout=300)
    print(f"doctor: dry run {dry_seconds:.1f} s, --fix of the last two {fix_seconds:.1f} s, {len(found)} findings")
    assert job.returncode == 0, output
    for orphan in (by_hand.volume_id, cut.volume_id, record_only):
        assert leftovers(orphan) == [], orphan
    assert store.get(stale) is None
    # The live volume: the same sessions, both paths up, its state untouched.
    assert sessions(live_iqn) == live_sessions and whole(live_iqn, live_wwid)
    assert store.get(live.volume_id) is not None
    cluster.detach(live)
    assert leftovers(live.volume_id) == []
    for volume in (by_hand, cut):
        cluster.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume.volume_id, node_id=cluster.node_id), timeout=60)
    for volume in (live, by_hand, cut):
        cluster.delete(volume)
