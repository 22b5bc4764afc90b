"""csi-iscsi doctor on the target node, on real LIO: LIO targets and storage objects, saved-config
entries and pool files no record names, and a record with nothing in LIO, planted beside a live
volume under fio verify. A dry run beside the running controller reports exactly them; --fix
refuses while the controller runs; with it stopped, --fix clears the LIO objects and saved entries
this controller's saved config shows are its own, in order, and leaves a target with ACLs, what was
made by hand, and all pool data (reported for a person); the live volume never notices."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from csi_iscsi import contract
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers, scrub_iscsi_and_lio
from .plugins import PORTALS, MiB, controller_args, mount_cap, running
from .test_node import NODE_ARGS, Cluster, fio
from .test_self_heal import sessions, whole

STATE = Path("/var/lib/csi-iscsi-target-doctor-test")
ROOT = Path("/var/tmp/csi-target-doctor-test")


def doctor(*flags: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run([sys.executable, "-m", "csi_iscsi", "doctor", "--side", "target", "--json", "--state-dir",
                           str(STATE), *flags], capture_output=True, text=True, timeout=600)
    findings = json.loads(proc.stdout)["findings"] if proc.stdout.strip() else []
    return proc.returncode, findings, proc.stderr


def kinds(findings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((f["kind"], f["volume_id"]) for f in findings)


def results(findings: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        out.setdefault((f["kind"], f["volume_id"]), []).append(f["result"])
    return out


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[ExitStack]:
    with ExitStack() as s:
        try:
            yield s
        finally:
            s.close()
            scrub_iscsi_and_lio(pool_dirs=(ROOT / "pool",))
            subprocess.run(["rm", "-rf", str(ROOT), str(STATE)], check=False)


def test_target_doctor_finds_and_clears_each_orphan_and_leaves_a_live_volume_alone(
        stack: ExitStack, tmp_path: Path, initiator_iqn: str) -> None:
    from rtslib_fb import FabricModule, FileIOStorageObject, Target

    pool = ROOT / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    save = tmp_path / "save.json"
    ctl_args = controller_args(STATE, [f"name=default,type=fileio,path={pool}"], save)
    node = stack.enter_context(running([*NODE_ARGS, "--state-dir", str(STATE)], tmp_path / "n.sock",
                                       tmp_path / "node.log"))
    ctl_stack = ExitStack()
    stack.callback(ctl_stack.close)
    controller = ctl_stack.enter_context(running(ctl_args, tmp_path / "c.sock", tmp_path / "controller.log"))
    cluster = Cluster(controller, node, str(NodeId("testbed", initiator_iqn)), ROOT, tmp_path / "n.sock",
                      tmp_path / "node.log", STATE)

    live = cluster.create("pvc-tdoctor-live")
    _, target = cluster.attach(live)
    live_iqn, live_wwid = contract.target_iqn(live.volume_id), contract.wwid(live.volume_id)
    live_sessions = sessions(live_iqn)
    job = fio(Path(target) / "fio.dat", 90, "target-doctor")

    # 1. A whole volume whose record is lost: its target, storage object, two saved entries and file.
    gone = cluster.create("pvc-tdoctor-gone").volume_id
    # 2. The same, with an initiator logged in to its target (by hand, as an admin testing it).
    busy = cluster.create("pvc-tdoctor-busy").volume_id
    cluster.controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=busy, node_id=cluster.node_id, volume_capability=mount_cap()), timeout=60)
    busy_iqn = contract.target_iqn(busy)
    subprocess.run(["iscsiadm", "-m", "node", "-o", "new", "-T", busy_iqn, "-p", PORTALS[0]], check=True,
                   capture_output=True)
    subprocess.run(["iscsiadm", "-m", "node", "-T", busy_iqn, "-p", PORTALS[0], "--login"], check=True,
                   capture_output=True, timeout=120)
    for vid in (gone, busy):
        (STATE / "controller" / "volumes" / f"{vid}.json").unlink()
    # 3. A ready volume whose target LIO lost (removed behind the controller).
    bare = cluster.create("pvc-tdoctor-bare").volume_id
    Target(FabricModule("iscsi"), contract.target_iqn(bare), mode="lookup").delete()
    # 4. A storage object made by hand under a volume id, over a file in the pool; 5. a pool file alone.
    lone = contract.volume_id_for_name("pvc-tdoctor-lone")
    FileIOStorageObject(lone, dev=str(pool / f"{lone}.img"), size=MiB, write_back=False)
    stray = contract.volume_id_for_name("pvc-tdoctor-stray")
    (pool / f"{stray}.img").write_bytes(b"\0" * 4096)

    # A dry run beside the running controller: exactly these, nothing changed.
    started = time.monotonic()
    code, found, err = doctor()
    dry_seconds = time.monotonic() - started
    assert code == 1, err
    assert kinds(found) == sorted(
        [("lio-target", gone), ("lio-target", busy), ("lio-object", gone), ("lio-object", busy),
         ("lio-object", lone), ("saved", gone), ("saved", gone), ("saved", busy), ("saved", busy),
         ("data", gone), ("data", busy), ("data", lone), ("data", stray), ("record", bare)]), \
        json.dumps(found, indent=1)
    # What no saved config of this controller names (made by hand here), and pool data, are reported,
    # never fixed.
    assert all(f["fix"] == "" for f in found if f["volume_id"] in (lone, stray) or f["kind"] == "data"), found
    assert sessions(busy_iqn), "the dry run logged the hand-made session out"
    code, _, err = doctor("--fix")
    assert code == 2 and "the controller is running" in err, err
    assert Path(f"/sys/kernel/config/target/iscsi/{contract.target_iqn(gone)}").is_dir()

    # --fix with the controller stopped: what has ACLs, and all pool data, stay.
    ctl_stack.close()
    code, partly, err = doctor("--fix")
    assert code == 1, err
    got = results(partly)
    assert got["lio-target", gone] == got["lio-object", gone] == ["cleared"], partly
    assert got["saved", gone] == ["cleared", "cleared"], partly
    # What a crash leaves has no ACL; one with ACLs (and here a session) is a person's to delete.
    assert got["lio-target", busy][0].startswith("left: it has ACLs for " + initiator_iqn.lower()), partly
    assert got["lio-object", busy][0].startswith("left: exported by iscsi " + busy_iqn), partly
    assert set(got["saved", busy]) == {"left: what it saves stays live in LIO"}, partly
    assert got["lio-object", lone] == got["record", bare] == ["reported only"], partly
    assert {r for v in (gone, busy, lone, stray) for r in got["data", v]} == {"reported only"}, partly
    assert all((pool / f"{v}.img").exists() for v in (gone, busy, lone, stray))

    # The admin logs out and deletes that target by hand; --fix clears the rest of what is this
    # controller's in LIO and in its saved config.
    subprocess.run(["iscsiadm", "-m", "node", "-T", busy_iqn, "--logout"], check=True, capture_output=True,
                   timeout=120)
    subprocess.run(["iscsiadm", "-m", "node", "-T", busy_iqn, "-o", "delete"], check=True, capture_output=True)
    Target(FabricModule("iscsi"), busy_iqn, mode="lookup").delete()
    started = time.monotonic()
    code, fixed, err = doctor("--fix")
    fix_seconds = time.monotonic() - started
    assert code == 0, (err, fixed)
    assert {f["result"] for f in fixed if f["volume_id"] == busy and f["kind"] != "data"} == {"cleared"}, fixed
    assert {f["result"] for f in fixed if f["volume_id"] != busy or f["kind"] == "data"} == {"reported only"}, fixed
    for vid in (gone, busy):
        assert not Path(f"/sys/kernel/config/target/iscsi/{contract.target_iqn(vid)}").exists()
        assert not list(Path("/sys/kernel/config/target/core").glob(f"*/{vid}"))
    assert list(Path("/sys/kernel/config/target/core").glob(f"*/{lone}"))
    assert all((pool / f"{v}.img").exists() for v in (gone, busy, lone, stray))  # doctor never deletes data
    doc = json.loads(save.read_text())
    assert sorted(so["name"] for so in doc["storage_objects"]) == sorted([live.volume_id, bare])
    assert sorted(t["wwn"] for t in doc["targets"]) == sorted([live_iqn, contract.target_iqn(bare)])

    # The controller's start restores the bare record's target; what is left is what doctor only reports.
    controller = ctl_stack.enter_context(running(ctl_args, tmp_path / "c2.sock", tmp_path / "controller2.log"))
    cluster = replace(cluster, controller=controller)
    code, after, err = doctor()
    assert kinds(after) == sorted([("lio-object", lone)] + [("data", v) for v in (gone, busy, lone, stray)]), \
        (err, after)

    output, _ = job.communicate(timeout=300)
    print(f"target doctor: dry run {dry_seconds:.1f} s ({len(found)} findings), second --fix {fix_seconds:.1f} s")
    assert job.returncode == 0, output
    assert sessions(live_iqn) == live_sessions and whole(live_iqn, live_wwid)
    assert (pool / f"{live.volume_id}.img").exists()
    cluster.detach(live)
    assert leftovers(live.volume_id) == []
