"""csi-iscsi status: the node side read from a host made of fakes (sysfs, multipathd, mountinfo),
the target side from records and a faked LIO; both read only, and never show a secret."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from csi_iscsi import contract
from csi_iscsi.ops.node_status import read_node_status
from csi_iscsi.ops.status import render_node, render_target
from csi_iscsi.ops.target_status import read_target_status
from tests.unit.test_controller import NODE, World
from tests.unit.test_node import PORTALS, VID, WWID, NodeWorld


@pytest.fixture
def node_world(tmp_path: Path) -> Iterator[NodeWorld]:
    w = NodeWorld(tmp_path)
    yield w
    w.channel.close()
    w.server.stop(0)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop()


def state_dir(world: World) -> Path:
    """The plugin's --state-dir, whose controller/ is the World's record directory."""
    root = world.tmp / "sd"
    if not root.exists():
        root.mkdir()
        os.symlink(world.tmp / "state", root / "controller")
    return root


def node_status(w: NodeWorld, paths: str, maps: str):  # type: ignore[no-untyped-def]
    state_dir = w.tmp / "sd"
    (state_dir / "node").mkdir(parents=True, exist_ok=True)
    if not (state_dir / "node" / "volumes").exists():
        os.symlink(w.tmp / "state", state_dir / "node" / "volumes")
    w.runner.on(["multipathd", "show", "paths"], stdout=paths)
    w.runner.on(["multipathd", "show", "maps"], stdout=maps)
    return read_node_status(state_dir, w.runner, sysfs=w.sys, dev=w.dev, mountinfo=w.mountinfo)


def test_node_status_shows_each_portal_s_session_device_and_path_state(node_world: NodeWorld) -> None:
    node_world.stage()
    for name in ("sdb", "sdc"):
        (node_world.sys / "block" / name / "device" / "state").write_text("running\n")
        (node_world.sys / "block" / name / "device" / "ioerr_cnt").write_text("0x3\n")
    status = node_status(node_world, f"{WWID} sdb failed faulty\n{WWID} sdc active ready\n",
                         f"{WWID} dm-0 2 active 36 chk\n")
    [v] = status.volumes
    assert (v.volume_id, v.phase, v.target_iqn, v.wwid) == (VID, "staged", contract.target_iqn(VID), WWID)
    assert [(p.portal, p.session, p.session_state, p.device, p.device_state, p.dm_state, p.checker, p.io_errors)
            for p in v.paths] == [(PORTALS[0], 1, "LOGGED_IN", "sdb", "running", "failed", "faulty", 3),
                                  (PORTALS[1], 2, "LOGGED_IN", "sdc", "running", "active", "ready", 3)]
    assert v.map is not None and (v.map.dm, v.map.paths, v.map.queueing) == ("dm-0", 2, "36 chk")
    assert v.staging_mounted and v.pod_mounts == []
    assert v.abnormal and v.condition == "1 of 2 paths are down: sdb (failed, faulty)"
    out = io.StringIO()
    render_node(status, out)
    assert f"path {PORTALS[0]}  session 1 LOGGED_IN  sdb running  multipath failed/faulty  io errors 3" in \
        out.getvalue()
    assert "condition: ABNORMAL: 1 of 2 paths are down" in out.getvalue()
    # One listing for all volumes: two multipathd calls, whatever the number of volumes.
    assert sorted([c[:3] for c in node_world.runner.calls if c[0] == "multipathd"][-2:]) == [
        ("multipathd", "show", "maps"), ("multipathd", "show", "paths")]  # asked at once, in either order


def test_node_status_calls_a_map_queueing_with_no_path_abnormal_and_a_lost_session_by_its_portal(
        node_world: NodeWorld) -> None:
    node_world.stage()
    (node_world.sys / "class/iscsi_session/session2/targetname").unlink()  # the second portal's session is gone
    status = node_status(node_world, f"{WWID} sdb active ready\n", f"{WWID} dm-0 1 active 25 sec\n")
    [v] = status.volumes
    assert [(p.portal, p.session_state, p.device) for p in v.paths] == [(PORTALS[0], "LOGGED_IN", "sdb"),
                                                                       (PORTALS[1], "none", "")]
    assert v.abnormal and "1 paths for 2 portals" in v.condition and "queueing I/O with no usable path" in v.condition


def test_node_status_reads_only(node_world: NodeWorld) -> None:
    node_world.stage()
    temp = node_world.tmp / "state" / f".{VID}.json.4242.tmp"  # a plugin's write in flight
    temp.write_text("{}")
    node_status(node_world, "", "")
    assert temp.exists()
    assert not [c for c in node_world.runner.calls[-2:] if c[0] != "multipathd"]


def test_target_status_names_nodes_chap_on_off_and_faults_and_never_a_secret(world: World) -> None:
    secrets = {"chapUser": "status-user", "chapPassword": "status-password-1"}
    chap = world.create("pvc-chap", authentication="chap").volume_id
    plain = world.create("pvc-plain").volume_id
    world.publish(chap, secrets=secrets)
    world.publish(plain, readonly=True)
    world.lio.grant(contract.target_iqn(plain), "iqn.2026-11.io.intruder:x")  # an ACL no publish made
    (world.tmp / "pool" / f"{chap}.img").unlink()
    status = read_target_status(state_dir(world), world.lio, world.pools(), ["10.0.0.1:3260", "10.0.1.1:3260"])
    views = {v.volume_id: v for v in status.volumes}
    initiator = NODE.split("/", 1)[1]
    assert [(a.initiator, a.node, a.chap, a.readonly) for a in views[chap].acls] == [
        (initiator, "worker-1", True, False)]
    assert views[chap].data == "missing" and views[chap].abnormal
    assert "missing from pool default" in views[chap].condition
    assert {(a.initiator, a.node, a.readonly) for a in views[plain].acls} == {
        (initiator, "worker-1", True), ("iqn.2026-11.io.intruder:x", "", False)}
    assert views[plain].abnormal and "iqn.2026-11.io.intruder:x that no publish recorded" in views[plain].condition
    text = io.StringIO()
    render_target(status, text)
    dumped = json.dumps(asdict(status)) + text.getvalue()
    assert "status-password-1" not in dumped and "status-user" not in dumped
    assert f"acl {initiator}  node worker-1  rw  CHAP" in text.getvalue()


def test_target_status_without_the_pools_says_what_it_did_not_check(world: World) -> None:
    vid = world.create().volume_id
    status = read_target_status(state_dir(world), world.lio, {}, [])
    [v] = status.volumes
    assert v.volume_id == vid and v.data == "not checked (pool default not given)" and not v.abnormal
    assert "no --portal given: the targets' portals are not checked" in status.notes


def test_a_stage_state_not_staged_is_not_called_abnormal(node_world: NodeWorld) -> None:
    """Reviewer: a failed stage's memo (phase attaching, no device) showed as ABNORMAL for ever."""
    from dataclasses import replace

    from csi_iscsi.host.stage_state import StageStateStore

    node_world.stage()
    store = StageStateStore(node_world.tmp / "state")
    state = store.get(VID)
    assert state is not None
    store.put(replace(state, phase="attaching", device="", mkfs_started=True))
    [v] = node_status(node_world, "", "").volumes
    assert not v.abnormal and v.condition.startswith("not staged (attaching)")


def test_portals_match_sessions_whatever_their_spelling(node_world: NodeWorld) -> None:
    from csi_iscsi.contract import canonical_portal as _canonical

    assert _canonical("[fd00:0::2]:3260") == _canonical("[fd00::2]:3260") == "[fd00::2]:3260"
    assert _canonical("10.0.0.1:3260") == "10.0.0.1:3260"


def test_target_status_does_not_call_a_volume_being_made_missing(world: World) -> None:
    from dataclasses import replace

    vid = world.create().volume_id
    record = world.service.get(vid)
    assert record is not None
    world.service._records.put(replace(record, state="creating"))
    (world.tmp / "pool" / f"{vid}.img").rename(world.tmp / "pool" / f"{vid}.img.part")  # a copy running
    [v] = read_target_status(state_dir(world), world.lio, world.pools(), []).volumes
    assert v.data == "not checked (creating)" and not v.abnormal


def test_status_on_the_target_side_creates_no_pool_directory(tmp_path: Path) -> None:
    from csi_iscsi.base.runner import SubprocessRunner
    from csi_iscsi.lio.pools import parse_pool_spec

    missing = tmp_path / "typo"
    pool = parse_pool_spec(f"name=p,type=fileio,path={missing}", SubprocessRunner(), create=False)
    assert not missing.exists()
    with pytest.raises(FileNotFoundError):
        pool.present(["csi-0"])


def test_the_status_command_does_not_import_the_serving_stack(tmp_path: Path) -> None:
    """Status is for a person at a prompt: under emulation the CLI's imports alone took seconds."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "csi_iscsi", "status", "--state-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nothing to show" in proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "csi_iscsi.ops.status" in imported
    assert not imported & {"csi_iscsi.cli", "csi_iscsi.server", "csi_iscsi.servicers.node", "csi_iscsi.health"}


def test_status_imports_neither_grpc_nor_prometheus_client() -> None:
    """Each import costs the operator's look seconds under emulation (the 2 s goal at 20 volumes)."""
    import subprocess
    import sys

    code = ("import sys, csi_iscsi.ops.status, csi_iscsi.ops.node_status; "
            "from csi_iscsi.base.runner import SubprocessRunner; SubprocessRunner().run(['true'], timeout=30); "
            "print(sorted(m for m in ('grpc', 'prometheus_client', 'csi_iscsi.lio.pools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_plugin_serving_metrics_declares_the_shared_ones_before_the_first_scrape() -> None:
    from prometheus_client import REGISTRY

    from csi_iscsi.base.metrics import declare_all

    declare_all()
    assert REGISTRY.get_sample_value("csi_iscsi_node_queueing_stopped_total") is not None
    assert "csi_iscsi_command_duration_seconds" in {m.name for m in REGISTRY.collect()}


def test_a_map_with_no_path_left_keeps_its_queueing_shown(node_world: NodeWorld) -> None:
    """multipathd lists no path at all (every one gone) while the map queues: the map's state is
    what an operator needs then, and it is shown."""
    node_world.stage()
    status = node_status(node_world, "", f"{WWID} dm-0 0 active 25 sec\n")
    [v] = status.volumes
    assert v.map is not None and v.map.queueing == "25 sec" and v.map.paths == 0, v.map
    assert v.abnormal
