"""Self-heal: what a staged volume lacks (from sysfs alone) and the repair of each kind of gap,
with fakes at the runner and sysfs seams; the loop's scheduling with a fake host side."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.host.api import Repair
from csi_iscsi.host.attach import Attacher
from csi_iscsi.host.healer import Healer
from csi_iscsi.host.iscsiadm import EXIT_NO_OBJS_FOUND
from csi_iscsi.host.scsi import Scsi
from tests.fakes import FakeRunner
from tests.unit import test_node
from tests.unit.test_attach import IQN, PORTALS, steps
from tests.unit.test_attach import world as world  # the fixture, re-exported for these tests
from tests.unit.test_scsi_multipath import WWID

World = tuple[FakeRunner, Attacher, Path]
SESSION2 = "class/iscsi_session/session2"
SDC = "devices/platform/host4/session2/target4:0:0/4:0:0:0/block/sdc"


def hide(sys_: Path, path: str) -> None:
    (sys_ / path).rename(sys_ / (path.replace("/", "_") + ".hidden"))


def unhide(sys_: Path, path: str) -> None:
    hidden = sys_ / (path.replace("/", "_") + ".hidden")
    if hidden.exists():
        hidden.rename(sys_ / path)


def logs_in_again(runner: FakeRunner, sys_: Path, *, records: bool = True) -> None:
    """A login on the second portal brings its session back with its device (the kernel's doing);
    without records, iscsiadm finds no record to log in with until one is made."""
    made = [records]

    def respond(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[0] != "iscsiadm" or PORTALS[1] not in argv:
            return None
        if "new" in argv:
            made[0] = True
        if "--login" in argv:
            if not made[0]:
                return EXIT_NO_OBJS_FOUND, ""
            unhide(sys_, SESSION2)
        return None

    runner.responders.insert(0, respond)


def test_a_whole_attachment_has_no_gaps_and_its_check_runs_no_command(world: World) -> None:
    runner, attacher, _ = world
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == []
    assert runner.calls == []


def test_a_session_logged_out_behind_the_driver_is_logged_in_again(world: World) -> None:
    runner, attacher, sys_ = world
    hide(sys_, SESSION2)
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == [f"{PORTALS[1]}: no session"]
    assert runner.calls == []
    logs_in_again(runner, sys_)
    done = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert done == [Repair("login", PORTALS[1], True, "logged in again")]
    # Only the lost portal is touched: no record made again, no logout, nothing on the other path.
    assert steps(runner) == [f"multipath -a {WWID}", "node 127.0.0.12:3260 --login"]
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == []


def test_a_new_session_is_scanned_as_part_of_its_login(world: World) -> None:
    """node.session.scan is manual: a session logged in again has no device until its LUN is scanned."""
    runner, attacher, sys_ = world
    hide(sys_, SDC)
    hide(sys_, SESSION2)
    logs_in_again(runner, sys_)
    scsi = ScanningScsi(sys_)
    attacher._scsi = scsi
    done = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert done == [Repair("login", PORTALS[1], True, "logged in again")]  # no separate rescan counted
    assert scsi.scans == [(2, 0)]
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == []


def test_a_lost_record_is_made_again_when_the_volume_needs_no_secret(world: World) -> None:
    runner, attacher, sys_ = world
    hide(sys_, SESSION2)
    logs_in_again(runner, sys_, records=False)
    done = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert [(r.action, r.ok) for r in done] == [("record", True), ("login", True)]
    assert steps(runner) == [f"multipath -a {WWID}", "node 127.0.0.12:3260 --login", "node 127.0.0.12:3260 -o new",
                             "node 127.0.0.12:3260 --login"]
    auth = [c for c in runner.calls if "update" in c]
    assert auth and "node.session.auth.authmethod" in auth[0] and "None" in auth[0]


def test_a_lost_chap_record_without_the_secret_is_reported_and_nothing_made(world: World) -> None:
    runner, attacher, sys_ = world
    hide(sys_, SESSION2)
    logs_in_again(runner, sys_, records=False)
    [step] = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=False)
    assert step.action == "record" and not step.ok and "stage the volume again" in step.detail
    assert steps(runner) == [f"multipath -a {WWID}", "node 127.0.0.12:3260 --login"]  # no record without a secret
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == [f"{PORTALS[1]}: no session"]


def test_a_refused_login_is_reported(world: World) -> None:
    runner, attacher, sys_ = world
    hide(sys_, SESSION2)
    runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", PORTALS[1]], returncode=24)  # auth failure
    [step] = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert step.action == "login" and not step.ok and "exited with 24" in step.detail


class ScanningScsi(Scsi):
    """A scan brings back the device the kernel had dropped."""

    def __init__(self, sysfs: Path) -> None:
        super().__init__(sysfs)
        self.scans: list[tuple[int, int]] = []

    def scan_lun(self, sid: int, lun: int) -> None:
        super().scan_lun(sid, lun)
        self.scans.append((sid, lun))
        unhide(self._sys, SDC)


def test_a_session_that_lost_its_device_is_rescanned(world: World) -> None:
    runner, attacher, sys_ = world
    hide(sys_, SDC)
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == [f"{PORTALS[1]}: session 2 has no device for LUN 0"]
    scsi = ScanningScsi(sys_)
    attacher._scsi = scsi
    done = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert [(r.action, r.where, r.ok) for r in done] == [("rescan", PORTALS[1], True)]
    assert scsi.scans == [(2, 0)] and steps(runner) == [f"multipath -a {WWID}"]


def test_a_path_out_of_the_map_waits_for_multipathd_to_take_it_back(world: World) -> None:
    _, attacher, sys_ = world
    slave = sys_ / "block/dm-0/slaves/sdc"
    slave.unlink()
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == [f"{PORTALS[1]}: sdc is not in map {WWID}"]
    threading.Timer(0.1, slave.write_text, args=("",)).start()  # multipathd's udev-driven add
    done = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert done == [Repair("map", "sdc", True, f"back under map {WWID}")]


def test_a_path_of_another_lun_is_never_put_under_the_map(world: World) -> None:
    _, attacher, sys_ = world
    (sys_ / "block/dm-0/slaves/sdc").unlink()
    (sys_ / "block/sdc/device/wwid").write_text("naa.60014050000000000000000000000000\n")
    done = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert [(r.action, r.ok) for r in done] == [("rescan", False)]
    assert "refusing to use a device that is not this volume" in done[0].detail


def test_a_session_iscsid_is_recovering_is_left_to_it(world: World) -> None:
    _, attacher, sys_ = world
    (sys_ / SESSION2 / "state").write_text("FAILED\n")
    hide(sys_, SDC)  # a recovering session's device may be blocked or gone: not ours to rescan
    assert attacher.gaps(IQN, PORTALS, 0, WWID) == []


# NodeVolumes: what the stage remembers for a repair ----------------------------------------------

@pytest.fixture
def node(tmp_path: Path) -> test_node.NodeWorld:
    w = test_node.NodeWorld(tmp_path)
    yield w
    w.channel.close()
    w.server.stop(0)


def cut_second_session(w: test_node.NodeWorld) -> None:
    (w.sys / "class/iscsi_session/session2/targetname").unlink()


def no_record_for_second_portal(w: test_node.NodeWorld) -> list[int]:
    made = [0]

    def respond(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[0] == "iscsiadm" and test_node.PORTALS[1] in argv:
            if "new" in argv:
                made[0] += 1
            elif "--login" in argv and not made[0]:
                return EXIT_NO_OBJS_FOUND, ""
        return None

    w.runner.responders.insert(0, respond)
    return made


def test_node_heals_only_staged_volumes_on_their_map(node: test_node.NodeWorld) -> None:
    assert node.volumes.heal_gaps_all() == {}
    node.stage()
    assert node.volumes.heal_gaps_all() == {test_node.VID: []}
    cut_second_session(node)
    assert node.volumes.heal_gaps(test_node.VID) == [f"{test_node.PORTALS[1]}: no session"]
    node.runner.calls.clear()
    gaps, done = node.volumes.heal(test_node.VID)
    assert gaps and done == [Repair("login", test_node.PORTALS[1], True, "logged in again")]
    assert node.volumes.heal_gaps(test_node.VID) == []
    node.unstage()
    assert node.volumes.heal_gaps(test_node.VID) == []  # not staged: nothing to heal


def test_a_chap_volume_record_is_made_again_with_the_secret_held_in_memory(node: test_node.NodeWorld) -> None:
    secrets = {"chapUser": "u1", "chapPassword": "p" * 16}
    node.stage(ctx={**test_node.CTX, "authentication": "chap"}, secrets=secrets)
    state = (node.tmp / "state" / f"{test_node.VID}.json").read_text()
    assert '"authentication": "chap"' in state and "p" * 16 not in state
    cut_second_session(node)
    made = no_record_for_second_portal(node)
    node.runner.calls.clear()
    node.runner.secrets_seen.clear()
    _, done = node.volumes.heal(test_node.VID)
    assert [(r.action, r.ok) for r in done] == [("record", True), ("login", True)] and made == [1]
    update = next(c for c in node.runner.calls if "update" in c)
    assert "p" * 16 in update and "p" * 16 in node.runner.secrets_seen[node.runner.calls.index(update)]
    assert not any("p" * 16 in r.detail for r in done)


def test_after_a_restart_a_chap_volume_record_is_reported_not_made(node: test_node.NodeWorld) -> None:
    node.stage(ctx={**test_node.CTX, "authentication": "chap"}, secrets={"chapUser": "u1", "chapPassword": "p" * 16})
    node.volumes._chaps.clear()  # what a restart of the plugin forgets
    cut_second_session(node)
    made = no_record_for_second_portal(node)
    _, done = node.volumes.heal(test_node.VID)
    assert [(r.action, r.ok) for r in done] == [("record", False)] and made == [0]


def test_a_volume_without_its_map_is_left_to_node_stage(node: test_node.NodeWorld) -> None:
    node.stage()
    (node.dev / "mapper" / test_node.WWID).unlink()
    (node.sys / "block/dm-0").rename(node.sys / "gone-dm-0")  # a reboot took the map
    cut_second_session(node)
    assert node.volumes.heal_gaps(test_node.VID) == []


# The loop --------------------------------------------------------------------------------------

class FakeHost:
    def __init__(self, gaps: dict[str, list[str]], ok: bool = True, closes: bool = True) -> None:
        self.gaps = gaps
        self.ok = ok
        self.closes = closes  # whether steps that say ok close the gap
        self.block: dict[str, threading.Event] = {}
        self.healed: list[str] = []

    def heal_gaps_all(self) -> dict[str, list[str]]:
        return {v: list(g) for v, g in self.gaps.items()}

    def heal_gaps(self, volume_id: str) -> list[str]:
        return self.gaps[volume_id]

    def heal(self, volume_id: str) -> tuple[list[str], list[Repair]]:
        if volume_id in self.block:
            assert self.block[volume_id].wait(10)
        self.healed.append(volume_id)
        gaps = self.gaps[volume_id]
        if self.ok and self.closes:
            self.gaps[volume_id] = []
        return gaps, [Repair("login", "127.0.0.12:3260", self.ok, "")]


def counted(action: str, result: str) -> float:
    return REGISTRY.get_sample_value("csi_iscsi_node_heal_actions_total",
                                     {"action": action, "result": result}) or 0.0


def test_a_whole_volume_starts_no_repair() -> None:
    host = FakeHost({"a": []})
    assert Healer(lambda: host, VolumeLocks(), 1).tick() == []  # type: ignore[arg-type,return-value]
    assert host.healed == []


def test_one_volume_stuck_in_a_login_delays_no_other() -> None:
    host = FakeHost({"a": ["x"], "b": ["y"]})
    host.block["a"] = threading.Event()
    healer = Healer(lambda: host, VolumeLocks(), 1, workers=2)  # type: ignore[arg-type,return-value]
    before = counted("login", "ok")
    threads = healer.tick()
    threads[1].join(5)
    assert host.healed == ["b"]
    assert healer.tick() == []  # "a" is still in flight: not started twice
    host.block["a"].set()
    threads[0].join(5)
    assert sorted(host.healed) == ["a", "b"] and counted("login", "ok") == before + 2


def test_a_volume_an_rpc_holds_is_left_for_the_next_round() -> None:
    host = FakeHost({"a": ["x"]})
    locks = VolumeLocks()
    healer = Healer(lambda: host, locks, 1)  # type: ignore[arg-type,return-value]
    with locks.hold("a", "NodeUnstageVolume"):
        for t in healer.tick():
            t.join(5)
    assert host.healed == []
    for t in healer.tick():
        t.join(5)
    assert host.healed == ["a"]


def test_a_failing_repair_is_tried_less_and_less_often() -> None:
    now = [1000.0]
    host = FakeHost({"a": ["x"]}, ok=False)
    healer = Healer(lambda: host, VolumeLocks(), 10, max_backoff=35, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    tried = []
    for _ in range(12):
        for t in healer.tick():
            t.join(5)
            tried.append(now[0] - 1000)
        now[0] += 5
    assert tried == [0, 20, 55]  # waits 20 s (10 * 2), then 35 s (the bound)


def test_no_pass_before_the_node_can_be_made() -> None:
    from csi_iscsi.base.errors import FailedPrecondition

    def not_yet() -> FakeHost:
        raise FailedPrecondition("no initiator name")

    assert Healer(not_yet, VolumeLocks(), 1).tick() == []  # type: ignore[arg-type]


def test_the_loop_runs_until_stopped() -> None:
    host = FakeHost({"a": ["x"]})
    healer = Healer(lambda: host, VolumeLocks(), 0.05)  # type: ignore[arg-type,return-value]
    healer.start()
    deadline = time.monotonic() + 5
    while not host.healed and time.monotonic() < deadline:
        time.sleep(0.02)
    healer.stop()
    assert host.healed == ["a"]


def test_the_backoff_never_overflows() -> None:
    healer = Healer(lambda: FakeHost({}), VolumeLocks(), 30, max_backoff=300, clock=lambda: 0.0)  # type: ignore[arg-type,return-value]
    healer._failures["a"] = 5000  # days of failures
    healer._failed("a")
    assert healer._retry_at["a"] == 300


def test_steps_that_say_ok_but_leave_the_gap_back_off_and_are_counted() -> None:
    now = [0.0]
    host = FakeHost({"a": ["x"]}, closes=False)
    healer = Healer(lambda: host, VolumeLocks(), 10, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    before = counted("check", "failed")
    for t in healer.tick():
        t.join(5)
    assert counted("check", "failed") == before + 1
    now[0] = 10
    assert healer.tick() == []  # waits 20 s, not the interval


def test_a_volume_without_a_working_path_is_not_attached_again(world: World) -> None:
    """A node whose every path ended may have been fenced: logging it in again behind its mount
    could write stale data over another node's."""
    runner, attacher, sys_ = world
    hide(sys_, SESSION2)
    (sys_ / "class/iscsi_session/session1/state").write_text("FAILED\n")  # the other path recovering, or refused
    logs_in_again(runner, sys_)
    [step] = attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert not step.ok and "no path of the volume works" in step.detail
    assert runner.calls == []


def test_the_wwid_is_remembered_before_a_new_path_comes(world: World) -> None:
    runner, attacher, sys_ = world
    hide(sys_, SESSION2)
    logs_in_again(runner, sys_)
    attacher.repair(IQN, PORTALS, 0, WWID, None, may_make_records=True)
    assert steps(runner) == [f"multipath -a {WWID}", "node 127.0.0.12:3260 --login"]


def test_volumes_that_are_not_staged_are_never_healed(node: test_node.NodeWorld) -> None:
    from dataclasses import replace

    from csi_iscsi.host.stage_state import ATTACHING, UNSTAGING, StageStateStore

    node.stage()
    cut_second_session(node)
    assert set(node.volumes.heal_gaps_all()) == {test_node.VID}
    store = StageStateStore(node.tmp / "state")
    for phase in (ATTACHING, UNSTAGING):
        store.put(replace(store.get(test_node.VID), phase=phase))  # type: ignore[type-var]
        assert node.volumes.heal_gaps_all() == {} and node.volumes.heal(test_node.VID) == ([], [])


def test_unstage_forgets_the_secret(node: test_node.NodeWorld) -> None:
    node.stage(ctx={**test_node.CTX, "authentication": "chap"}, secrets={"chapUser": "u1", "chapPassword": "p" * 16})
    assert test_node.VID in node.volumes._chaps
    node.unstage()
    assert node.volumes._chaps == {}
    node.stage()  # staged again without CHAP: no secret from before is kept
    assert node.volumes._chaps == {}


def test_the_healer_and_the_node_service_share_one_lock_per_volume(tmp_path: Path) -> None:
    from csi_iscsi import cli

    args = cli._parser().parse_args(["node", "--state-dir", str(tmp_path), "--node-name", "n1"])
    services = cli.build_services(args)
    try:
        from csi_iscsi.host.healer import Healer
        from csi_iscsi.ops.doctor_loop import DoctorLoop

        [healer] = [loop for loop in services.background if isinstance(loop, Healer)]
        assert [type(loop) for loop in services.background] == [Healer, DoctorLoop]
        assert healer._locks is services.node._locks  # type: ignore[union-attr]
        assert healer._locks._dir == tmp_path / "node" / "locks"  # shared with csi-iscsi doctor
        off = cli.build_services(cli._parser().parse_args(
            ["node", "--state-dir", str(tmp_path / "b"), "--node-name", "n1", "--heal-interval", "0",
             "--doctor-interval", "0"]))
        assert off.background == []
        for lock in off.owned:
            lock.release()
    finally:
        for lock in services.owned:
            lock.release()


def test_a_portal_spelled_otherwise_than_sysfs_writes_it_is_not_a_gap(tmp_path: Path) -> None:
    """The controller's --portal may write an IPv6 address in a long form; sysfs writes the short one."""
    import os

    from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
    from csi_iscsi.host.multipath import Multipath
    from tests.unit.test_scsi_multipath import make_sysfs

    sys_ = make_sysfs(tmp_path, 1, 3, {"sdb": (0, WWID)}, IQN, "[fd00::2]:3260")
    (sys_ / "block/dm-0/slaves").mkdir(parents=True)
    (sys_ / "block/dm-0/slaves/sdb").write_text("")
    (tmp_path / "dev/mapper").mkdir(parents=True)
    (tmp_path / "dev/dm-0").write_text("")
    os.symlink(tmp_path / "dev/dm-0", tmp_path / "dev/mapper" / WWID)
    runner = FakeRunner()
    attacher = Attacher(Iscsiadm(runner), Scsi(sys_), Multipath(runner, dev=tmp_path / "dev", sysfs=sys_),
                        SessionSettings())
    assert attacher.gaps(IQN, ["[FD00:0:0::2]:3260"], 0, WWID) == []
    assert attacher.gaps(IQN, ["[fd00::3]:3260"], 0, WWID) == ["[fd00::3]:3260: no session"]
