"""csi-iscsi doctor on a worker, with fakes at the runner, sysfs and mount-table seams: each kind of
orphan found, each fix in the safe order, and nothing a stage state names ever touched."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from csi_iscsi import contract
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.host.stage_state import ATTACHING, STAGED, StageState, StageStateStore
from csi_iscsi.ops.node_doctor import MAP, RECORD, SESSION, STATE, NodeDoctor, parse_records
from tests.unit import test_node
from tests.unit.test_node import IQN, PORTALS, VID, WWID, NodeWorld
from tests.unit.test_node_faults import fake_users

OTHER = contract.volume_id_for_name("pvc-other")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[NodeWorld]:
    w = NodeWorld(tmp_path)
    (tmp_path / "sd" / "node").mkdir(parents=True)
    os.symlink(tmp_path / "state", tmp_path / "sd" / "node" / "volumes")
    yield w
    w.channel.close()
    w.server.stop(0)


def doctor(w: NodeWorld) -> NodeDoctor:
    return NodeDoctor(w.tmp / "sd", w.runner, sysfs=w.sys, dev=w.dev, mountinfo=w.mountinfo)


def node_locks(w: NodeWorld) -> VolumeLocks:
    """The locks the plugin and the doctor share: <state-dir>/node/locks."""
    return VolumeLocks(w.tmp / "sd" / "node" / "locks")


def fix(w: NodeWorld, locks: VolumeLocks | None = None) -> list[tuple[str, str]]:
    d = doctor(w)
    done = d.fix(d.find(), w.volumes, locks or node_locks(w), StageStateStore(w.tmp / "state"))
    return [(f.kind, f.result) for f in done]


def records(w: NodeWorld, *iqns: str, iface: str = "default") -> None:
    """iscsiadm's node records of these targets, until a delete of the target's."""
    left = list(iqns)

    def respond(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:3] != ("iscsiadm", "-m", "node"):
            return None
        if argv[-2:] == ("-o", "delete") and argv[4] in left:
            left.remove(argv[4])
            return 0, ""
        if len(argv) == 3:
            return (0, "".join(f"{p},1 {iqn}\n" for iqn in left for p in PORTALS)) if left else (21, "")
        if argv[3:] == ("-P", "1"):
            return (0, "".join(f"Target: {iqn}\n" + "".join(f"\tPortal: {p},1\n\t\tIface Name: {iface}\n"
                                                              for p in PORTALS) for iqn in left)) if left else (21, "")
        return None

    w.runner.responders.insert(0, respond)


def orphan_the_staged_volume(w: NodeWorld) -> None:
    """What a crash between a detach's start and its end can leave, or a hand login: sessions, map and
    records of the volume's target, with no stage state (and nothing mounted)."""
    w.stage()
    lines = [line for line in w.mountinfo.read_text().splitlines() if "/staging" not in line]
    w.mountinfo.write_text("\n".join(lines) + "\n")
    (w.tmp / "state" / f"{VID}.json").unlink()


def test_a_staged_volume_is_never_a_finding(world: NodeWorld) -> None:
    world.stage()
    records(world, IQN)
    assert doctor(world).find() == []


def test_sessions_and_records_no_state_names_are_found_and_detached_in_the_safe_order(world: NodeWorld) -> None:
    orphan_the_staged_volume(world)
    records(world, IQN)
    found = doctor(world).find()
    assert [(f.kind, f.volume_id) for f in found] == [(SESSION, VID), (SESSION, VID)]
    world.runner.calls.clear()
    assert fix(world) == [(SESSION, "cleared"), (SESSION, "cleared")]
    steps = world.steps()
    assert steps.index(f"multipath -f {WWID}") < steps.index("delete sdb") < steps.index("session -r 1 --logout")
    assert steps.index("session -r 2 --logout") < steps.index("-o delete")  # records last
    assert doctor(world).find() == []


def test_a_record_alone_is_found_and_deleted(world: NodeWorld) -> None:
    other_iqn = contract.target_iqn(OTHER)
    records(world, other_iqn)
    found = doctor(world).find()
    assert [(f.kind, f.volume_id) for f in found] == [(RECORD, OTHER)] * 2  # one per portal
    world.runner.calls.clear()
    assert fix(world) == [(RECORD, "cleared")] * 2
    assert ("iscsiadm", "-m", "node", "-T", other_iqn, "-o", "delete") in world.runner.calls


def test_records_of_targets_that_are_not_the_drivers_are_not_findings(world: NodeWorld) -> None:
    records(world, "iqn.2003-01.org.example:backup-disk")
    assert doctor(world).find() == []


def test_a_volume_staged_between_the_look_and_the_fix_is_left(world: NodeWorld) -> None:
    orphan_the_staged_volume(world)
    records(world, IQN)
    d = doctor(world)
    found = d.find()
    StageStateStore(world.tmp / "state").put(StageState(VID, IQN, PORTALS, 0, WWID, "/s", "mount", "ext4"))
    world.runner.calls.clear()
    done = d.fix(found, world.volumes, node_locks(world), StageStateStore(world.tmp / "state"))
    assert {f.result for f in done} == {"left: the volume was staged meanwhile"}
    assert world.runner.calls == []


def test_a_volume_the_plugin_holds_is_left(world: NodeWorld) -> None:
    orphan_the_staged_volume(world)
    records(world, IQN)
    plugin = node_locks(world)  # another process's locks on the same directory
    with plugin.hold(VID, "NodeStageVolume"):
        world.runner.calls.clear()
        assert {r for _, r in fix(world)} == {"left: the node plugin is working on the volume"}
    assert not any("--logout" in c for c in world.runner.calls)


def test_a_volume_in_use_is_never_detached(world: NodeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stage()  # mounted at its staging path
    monkeypatch.setattr("csi_iscsi.host.filesystem.Filesystems.users", fake_users(world))
    (world.tmp / "state" / f"{VID}.json").unlink()
    records(world, IQN)
    world.runner.calls.clear()
    results = {r for _, r in fix(world)}
    assert len(results) == 1 and "is in use" in results.pop()
    assert not any(c[0] in ("multipath", "umount") or "--logout" in c for c in world.runner.calls)


def pathless_map(w: NodeWorld, name: str, holders: bool = False, staged_once: str = "") -> None:
    """staged_once: the volume the driver staged here once (its lock file is there)."""
    if staged_once:
        node_locks(w)  # makes the directory
        (w.tmp / "sd" / "node" / "locks" / f"{staged_once}.lock").touch()
    dm = w.sys / "block" / "dm-7"
    (dm / "dm").mkdir(parents=True)
    (dm / "dm" / "name").write_text(name + "\n")
    (dm / "dm" / "uuid").write_text(f"mpath-{name}\n")
    (dm / "slaves").mkdir()
    (dm / "holders").mkdir()
    if holders:
        (dm / "holders" / "dm-8").mkdir()
    os.symlink(dm, w.dev / "mapper" / name)

    def flush(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv == ("multipath", "-f", name):
            (w.dev / "mapper" / name).unlink()
            os.rename(dm, w.sys / "flushed-dm-7")
            return 0, ""
        return None

    w.runner.responders.insert(0, flush)


def test_a_pathless_map_of_an_lio_lun_no_state_names_is_flushed(world: NodeWorld) -> None:
    name = contract.wwid(OTHER)
    pathless_map(world, name, staged_once=OTHER)
    [f] = doctor(world).find()
    assert (f.kind, f.subject, f.volume_id) == (MAP, name, OTHER)
    assert fix(world) == [(MAP, "cleared")]
    assert ("multipath", "-f", name) in world.runner.calls


def test_a_pathless_map_held_open_is_left(world: NodeWorld) -> None:
    pathless_map(world, contract.wwid(OTHER), holders=True, staged_once=OTHER)
    assert fix(world) == [(MAP, "left: a device is stacked on the map or it is mounted (holders)")]
    assert not any(c[:2] == ("multipath", "-f") or "disablequeueing" in c for c in world.runner.calls)


def test_a_pathless_map_opened_by_what_doctor_cannot_see_keeps_its_queueing(world: NodeWorld) -> None:
    name = contract.wwid(OTHER)
    pathless_map(world, name, staged_once=OTHER)
    world.runner.on(["dmsetup", "info"], stdout="1\n")  # open once, by no process in /proc
    assert fix(world) == [(MAP, "left: opened 1 times, 0 of them by processes doctor can see")]
    assert not any(c[:2] == ("multipath", "-f") or "disablequeueing" in c for c in world.runner.calls)


def test_doctor_never_acts_without_its_lock_file(tmp_path: Path) -> None:
    from csi_iscsi.base.errors import Aborted

    locks_dir = tmp_path / "locks"
    strict, plugin = VolumeLocks(locks_dir, strict=True), VolumeLocks(locks_dir)
    locks_dir.rmdir()
    locks_dir.write_text("")  # a lock file cannot be made under it (any OSError; root writes anywhere)
    with pytest.raises(Aborted, match="cannot be made"), strict.hold(VID, "csi-iscsi doctor"):
        pass
    with pytest.raises(NotADirectoryError), plugin.hold(VID, "NodeUnpublishVolume"):
        pass  # the plugin falls back only where a lock file cannot be made for lack of room or rights


def test_maps_of_other_disks_are_not_findings(world: NodeWorld) -> None:
    pathless_map(world, "3600a098038303053453f463045")  # a NetApp LUN's map, down for now
    assert doctor(world).find() == []


def test_a_pathless_map_of_an_lio_lun_the_driver_never_staged_here_is_not_a_finding(world: NodeWorld) -> None:
    pathless_map(world, contract.wwid(OTHER))  # a targetcli disk of the admin's: same WWID prefix, no lock file
    assert doctor(world).find() == []


def test_sessions_presenting_another_initiator_are_another_nodes(world: NodeWorld) -> None:
    orphan_the_staged_volume(world)
    for sid in (1, 2):
        (world.sys / "class/iscsi_session" / f"session{sid}" / "initiatorname").write_text("iqn.2026-11.io.x:other\n")
    records(world, IQN, iface="csi-0000other0000")
    mine = NodeDoctor(world.tmp / "sd", world.runner, initiator="iqn.2026-11.io.x:me", iface="csi-1111mine11111",
                      sysfs=world.sys, dev=world.dev, mountinfo=world.mountinfo)
    assert [f.kind for f in mine.find()] == []
    theirs = NodeDoctor(world.tmp / "sd", world.runner, initiator="iqn.2026-11.io.x:other", iface="csi-0000other0000",
                        sysfs=world.sys, dev=world.dev, mountinfo=world.mountinfo)
    assert [f.kind for f in theirs.find()] == [SESSION, SESSION]


def test_doctor_refuses_a_directory_that_is_not_a_node_plugins(tmp_path: Path) -> None:
    import subprocess
    import sys

    for side, said in (("auto", "neither"), ("node", "not a node plugin's state directory"),
                       ("target", "not a controller's state directory")):
        proc = subprocess.run([sys.executable, "-m", "csi_iscsi", "doctor", "--state-dir", str(tmp_path / "typo"),
                               "--side", side, "--node-name", "n1", "--initiator-iqn", "iqn.2026-11.io.x:me"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and said in proc.stderr, (side, proc.stderr)
        assert not (tmp_path / "typo").exists()  # and made nothing


def test_a_lock_is_released_for_the_next_holder_in_another_process(tmp_path: Path) -> None:
    first, second = VolumeLocks(tmp_path), VolumeLocks(tmp_path)
    with first.hold(VID, "NodeStageVolume"), pytest.raises(Exception, match="another process"), \
            second.hold(VID, "csi-iscsi doctor"):
        pass
    with second.hold(VID, "csi-iscsi doctor"):
        pass


def test_states_with_nothing_behind_them(world: NodeWorld) -> None:
    store = StageStateStore(world.tmp / "state")
    left = contract.volume_id_for_name("pvc-left")
    reboot = contract.volume_id_for_name("pvc-reboot")
    mkfs = contract.volume_id_for_name("pvc-mkfs")
    for vid, phase, mkfs_started in ((left, ATTACHING, False), (reboot, STAGED, False), (mkfs, ATTACHING, True)):
        store.put(StageState(vid, contract.target_iqn(vid), PORTALS, 0, contract.wwid(vid), f"/s/{vid}", "mount",
                             "ext4", device="/dev/gone", phase=phase, mkfs_started=mkfs_started))
    found = {f.volume_id: f for f in doctor(world).find()}
    assert set(found) == {left, reboot}  # a cut-short mkfs is remembered on purpose
    assert {f.kind for f in found.values()} == {STATE}
    assert found[left].fix and not found[reboot].fix
    results = dict((f.volume_id, f.result) for f in doctor(world).fix(
        list(found.values()), world.volumes, node_locks(world), store))
    assert results == {left: "cleared", reboot: "reported only"}
    assert store.get(left) is None and store.get(reboot) is not None and store.get(mkfs) is not None


def test_the_json_names_no_secret(world: NodeWorld) -> None:
    world.stage(ctx={**test_node.CTX, "authentication": "chap"}, secrets={"chapUser": "u", "chapPassword": "s" * 16})
    (world.tmp / "state" / f"{VID}.json").unlink()
    records(world, IQN)
    text = json.dumps([asdict(f) for f in doctor(world).find()])
    assert VID in text and "s" * 16 not in text


def test_records_are_read_with_their_iface() -> None:
    text = ("Target: iqn.2026-11.io.csi-iscsi:csi-0123\n\tPortal: 127.0.0.11:3260,-1\n\t\tIface Name: csi-abc\n"
            "\t\tIface Name: default\n\tPortal: [fd00::2]:3260,1\n\t\tIface Name: default\n")
    assert parse_records(text) == [("iqn.2026-11.io.csi-iscsi:csi-0123", "127.0.0.11:3260", "csi-abc"),
                                   ("iqn.2026-11.io.csi-iscsi:csi-0123", "127.0.0.11:3260", "default"),
                                   ("iqn.2026-11.io.csi-iscsi:csi-0123", "[fd00::2]:3260", "default")]


def test_records_of_another_nodes_iface_are_not_findings(world: NodeWorld) -> None:
    other_iqn = contract.target_iqn(OTHER)
    world.runner.on(["iscsiadm", "-m", "node", "-P", "1"],
                    stdout=f"Target: {other_iqn}\n\tPortal: 127.0.0.11:3260,1\n\t\tIface Name: csi-0000other0000\n")
    d = NodeDoctor(world.tmp / "sd", world.runner, initiator="iqn.2026-11.io.x:me", iface="csi-1111mine11111",
                   sysfs=world.sys, dev=world.dev, mountinfo=world.mountinfo)
    assert d.find() == []
