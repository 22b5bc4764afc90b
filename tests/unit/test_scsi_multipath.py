from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from csi_iscsi.base.errors import DeadlineExceeded
from csi_iscsi.host.multipath import MapBusy, Multipath
from csi_iscsi.host.scsi import Scsi
from tests.fakes import FakeRunner

WWID = "36001405" + "a" * 25


def make_sysfs(root: Path, sid: int, host: int, devices: dict[str, tuple[int, str]],
               target: str = "", portal: str = "") -> Path:
    """A sysfs shaped like the kernel's for one iSCSI session with the given sdX → (lun, wwid)."""
    sys_ = root / "sys"
    session = sys_ / f"devices/platform/host{host}/session{sid}"
    (sys_ / "class/iscsi_session" / f"session{sid}").mkdir(parents=True)
    os.symlink(session, sys_ / "class/iscsi_session" / f"session{sid}" / "device")
    if target:
        (sys_ / "class/iscsi_session" / f"session{sid}" / "targetname").write_text(target + "\n")
        (sys_ / "class/iscsi_session" / f"session{sid}" / "state").write_text("LOGGED_IN\n")
        conn = sys_ / "class/iscsi_connection" / f"connection{sid}:0"
        conn.mkdir(parents=True)
        address, port = portal.rsplit(":", 1)
        (conn / "persistent_address").write_text(address.strip("[]") + "\n")
        (conn / "persistent_port").write_text(port + "\n")
    (sys_ / "class/scsi_host" / f"host{host}").mkdir(parents=True)
    (sys_ / "class/scsi_host" / f"host{host}" / "scan").write_text("")
    for name, (lun, wwid) in devices.items():
        dev = session / f"target{host}:0:0" / f"{host}:0:0:{lun}"
        (dev / "block" / name).mkdir(parents=True)
        (sys_ / "block" / name / "device").mkdir(parents=True)
        (sys_ / "block" / name / "device/wwid").write_text(f"naa.{wwid[1:]}\n")
        (sys_ / "block" / name / "device/state").write_text("running\n")
    return sys_


def test_sessions_are_read_from_sysfs(tmp_path: Path) -> None:
    make_sysfs(tmp_path, 5, 7, {}, "iqn.2026-11.io.x:a", "127.0.0.11:3260")
    sys_ = make_sysfs(tmp_path, 6, 8, {}, "iqn.2026-11.io.x:b", "[fd00::2]:3260")
    make_sysfs(tmp_path, 9, 10, {})  # a session without a target name yet: skipped
    sessions = Scsi(sys_).iscsi_sessions()
    assert [(s.sid, s.portal, s.target_iqn) for s in sessions] == [
        (5, "127.0.0.11:3260", "iqn.2026-11.io.x:a"), (6, "[fd00::2]:3260", "iqn.2026-11.io.x:b")]


def test_devices_are_found_by_session_and_lun(tmp_path: Path) -> None:
    sys_ = make_sysfs(tmp_path, 5, 7, {"sdc": (0, WWID), "sdd": (1, "3600140500")})
    scsi = Scsi(sys_)
    assert scsi.host_number(5) == 7
    assert [d.name for d in scsi.devices(5, 0)] == ["sdc"]
    assert scsi.wwid("sdc") == WWID
    assert scsi.state("sdc") == "running" and scsi.state("sdz") == "gone"
    scsi.scan_lun(5, 0)
    assert (sys_ / "class/scsi_host/host7/scan").read_text() == "- - 0"
    scsi.delete("sdc")
    assert (sys_ / "block/sdc/device/delete").read_text() == "1"
    scsi.delete("sdz")  # already gone: fine


def make_map(tmp_path: Path, slaves: list[str]) -> tuple[Path, Path]:
    dev, sys_ = tmp_path / "dev", tmp_path / "sys"
    (dev / "mapper").mkdir(parents=True)
    (dev / "dm-3").write_text("")
    os.symlink(dev / "dm-3", dev / "mapper" / WWID)
    (sys_ / "block/dm-3/slaves").mkdir(parents=True)
    for s in slaves:
        (sys_ / "block/dm-3/slaves" / s).write_text("")
    return dev, sys_


def test_map_is_found_with_all_its_paths(tmp_path: Path) -> None:
    dev, sys_ = make_map(tmp_path, ["sdb", "sdc"])
    mp = Multipath(FakeRunner(), dev=dev, sysfs=sys_)
    assert mp.wait_for_map(WWID, ["sdb", "sdc"], timeout=1) == dev / "mapper" / WWID


def test_a_map_udev_has_not_linked_yet_is_waited_for(tmp_path: Path) -> None:
    """The kernel lists the map and both paths in sysfs before udev makes /dev/mapper/<wwid>: the
    caller opens that path next, so the wait goes on until it exists."""
    dev, sys_ = make_map(tmp_path, ["sdb", "sdc"])
    (dev / "mapper" / WWID).unlink()
    (sys_ / "block/dm-3/dm").mkdir()
    (sys_ / "block/dm-3/dm/name").write_text(WWID + "\n")
    mp = Multipath(FakeRunner(), dev=dev, sysfs=sys_, poll_interval=0.01)
    with pytest.raises(DeadlineExceeded, match="absent"):
        mp.wait_for_map(WWID, ["sdb", "sdc"], timeout=0.2, nudge_after=10)
    link = threading.Timer(0.2, os.symlink, (dev / "dm-3", dev / "mapper" / WWID))
    link.start()
    start = time.monotonic()
    path = mp.wait_for_map(WWID, ["sdb", "sdc"], timeout=5, nudge_after=10)
    link.join()
    assert path.exists() and time.monotonic() - start >= 0.15


def test_map_missing_a_path_times_out_with_a_useful_message(tmp_path: Path) -> None:
    dev, sys_ = make_map(tmp_path, ["sdb"])
    runner = FakeRunner()
    mp = Multipath(runner, dev=dev, sysfs=sys_, poll_interval=0.01)
    with pytest.raises(DeadlineExceeded) as err:
        mp.wait_for_map(WWID, ["sdb", "sdc"], timeout=0.2, nudge_after=0.05)
    assert "sdc" in str(err.value) and err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ("multipath", WWID) in runner.calls


def test_flush_retries_and_then_reports_busy(tmp_path: Path) -> None:
    dev, sys_ = make_map(tmp_path, ["sdb"])
    runner = FakeRunner()
    runner.on(["multipath", "-f"], returncode=1)
    mp = Multipath(runner, dev=dev, sysfs=sys_)
    start = time.monotonic()
    with pytest.raises(MapBusy):
        mp.flush(WWID, deadline=time.monotonic() + 0.35, delay=0.1)
    assert 0.2 < time.monotonic() - start < 1
    assert 2 <= runner.calls.count(("multipath", "-f", WWID)) <= 4


def test_flush_of_a_missing_map_runs_nothing(tmp_path: Path) -> None:
    runner = FakeRunner()
    Multipath(runner, dev=tmp_path, sysfs=tmp_path).flush(WWID)
    assert runner.calls == []


def test_a_stale_mapper_link_to_a_reused_dm_number_is_not_the_map(tmp_path: Path) -> None:
    """udev has not yet removed the link of a map flushed a moment ago, and dm-3 is another
    volume's map now: the WWID has no map."""
    dev, sys_ = make_map(tmp_path, ["sdb"])
    (sys_ / "block/dm-3/dm").mkdir()
    (sys_ / "block/dm-3/dm/name").write_text("36001405" + "b" * 25 + "\n")
    mp = Multipath(FakeRunner(), dev=dev, sysfs=sys_)
    assert mp.dm_name(WWID) is None and mp.slaves(WWID) == []
    (sys_ / "block/dm-3/dm/name").write_text(WWID + "\n")
    assert mp.dm_name(WWID) == "dm-3"


def test_a_missing_multipath_command_is_reported_at_once(tmp_path: Path) -> None:
    from csi_iscsi.base.runner import CommandMissing

    dev, sys_ = make_map(tmp_path, ["sdb"])
    runner = FakeRunner()

    def missing(argv: tuple[str, ...]) -> tuple[int, str] | None:
        raise CommandMissing(argv[0])

    runner.responders.insert(0, missing)
    mp = Multipath(runner, dev=dev, sysfs=sys_, poll_interval=0.01)
    with pytest.raises(CommandMissing):
        mp.wait_for_map(WWID, ["sdb", "sdc"], timeout=5, nudge_after=0.05)


def test_a_device_the_kernel_is_already_removing_is_deleted(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    sys_ = make_sysfs(tmp_path, 5, 7, {"sdc": (0, WWID)})
    real_write = Path.write_text

    def write(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name == "delete":
            raise OSError(errno.ENODEV, "No such device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_text", write)
    Scsi(sys_).delete("sdc")
    monkeypatch.setattr(Path, "write_text", lambda self, data: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(OSError):
        Scsi(sys_).delete("sdc")


def test_a_path_whose_first_check_is_still_running_is_not_down() -> None:
    """multipathd prints "i/o pending" (two words) for a check in flight, as on a path just logged
    in on a slow host; read word by word, it was taken for a down path."""
    runner = FakeRunner()
    runner.on(["multipathd", "show", "paths"], stdout=(
        f"{WWID} sdb active i/o pending\n"
        f"{WWID} sdc active ready\n"
        f"{WWID} sdd undef undef\n"
        f"{WWID} sde active ghost\n"
        "3600140500 sdf failed faulty\n"))
    states = Multipath(runner).path_states(WWID)
    assert [(p.device, p.checker, p.down) for p in states] == [
        ("sdb", "i/o pending", False), ("sdc", "ready", False), ("sdd", "undef", False), ("sde", "ghost", False)]


def test_failed_faulty_and_timed_out_paths_are_down() -> None:
    runner = FakeRunner()
    runner.on(["multipathd", "show", "paths"], stdout=(
        f"{WWID} sdb failed ready\n"
        f"{WWID} sdc active faulty\n"
        f"{WWID} sdd active i/o timeout\n"
        f"{WWID} sde active shaky\n"))
    states = Multipath(runner).path_states(WWID)
    assert [p.down for p in states] == [True] * 4
    assert str(states[2]) == "sdd (active, i/o timeout)"


def disabled(runner: FakeRunner) -> bool:
    return ("multipathd", "disablequeueing", "map", WWID) in runner.calls


def map_with_paths(tmp_path: Path, slaves: list[str], paths: str) -> tuple[Multipath, FakeRunner]:
    """A map over slaves whose paths multipathd shows as paths (its `show paths` lines)."""
    dev, sys_ = make_map(tmp_path, slaves)
    runner = FakeRunner()
    runner.on(["multipathd", "show", "paths"], stdout=paths)
    return Multipath(runner, dev=dev, sysfs=sys_), runner


def test_a_detach_with_no_usable_path_stops_queueing_after_the_grace(tmp_path: Path) -> None:
    """The target is dead or has fenced this node: with queueing long enough to ride out a target
    restart, umount and flush would wait for it; the volume is leaving, so after the grace the map
    fails its queued I/O and the detach finishes within its bound."""
    mp, runner = map_with_paths(tmp_path, ["sdb", "sdc"], f"{WWID} sdb failed faulty\n{WWID} sdc failed faulty\n")
    with mp.queueing_bounded(WWID, grace=0.2, check_every=0.02):
        time.sleep(0.1)
        assert not disabled(runner)  # within the grace a path may still come back
        time.sleep(0.4)
        assert disabled(runner)


def test_a_detach_whose_map_has_a_usable_path_keeps_every_queued_write(tmp_path: Path) -> None:
    mp, runner = map_with_paths(tmp_path, ["sdb", "sdc"], f"{WWID} sdb failed faulty\n{WWID} sdc active i/o pending\n")
    with mp.queueing_bounded(WWID, grace=0.05, check_every=0.02):
        time.sleep(0.3)
    assert not disabled(runner)
    runner.on(["multipathd", "show", "paths"], returncode=1)  # multipathd cannot say: nothing is dropped
    with mp.queueing_bounded(WWID, grace=0.05, check_every=0.02):
        time.sleep(0.3)
    assert not disabled(runner)


def test_a_detach_that_ends_within_the_grace_stops_nothing(tmp_path: Path) -> None:
    mp, runner = map_with_paths(tmp_path, ["sdb"], f"{WWID} sdb failed faulty\n")
    start = time.monotonic()
    with mp.queueing_bounded(WWID, grace=30):
        pass
    assert time.monotonic() - start < 1  # the watcher does not hold the caller
    assert runner.calls == []


def test_queueing_is_stopped_only_after_the_grace_without_a_path_in_a_row(tmp_path: Path) -> None:
    """A path that flaps back resets the count: a moment with no path is not a dead target."""
    dev, sys_ = make_map(tmp_path, ["sdb"])
    runner = FakeRunner()
    answers = iter([f"{WWID} sdb failed faulty\n", f"{WWID} sdb active ready\n"] * 3)

    def flapping(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:3] == ("multipathd", "show", "paths"):
            return 0, next(answers, f"{WWID} sdb failed faulty\n")
        return None

    runner.responders.insert(0, flapping)
    mp = Multipath(runner, dev=dev, sysfs=sys_)
    with mp.queueing_bounded(WWID, grace=0.15, check_every=0.05):
        time.sleep(0.3)  # six checks, never 0.15 s in a row without a path
        assert not disabled(runner)
        time.sleep(0.5)
        assert disabled(runner)


def test_a_failing_check_does_not_end_the_watch_and_nested_bounds_watch_once(tmp_path: Path) -> None:
    dev, sys_ = make_map(tmp_path, ["sdb"])
    runner = FakeRunner()
    runner.on(["multipathd", "show", "paths"], stdout=f"{WWID} sdb failed faulty\n")
    runner.on(["multipathd", "show", "paths"], returncode=127, times=2)  # nsenter cannot find it, twice
    mp = Multipath(runner, dev=dev, sysfs=sys_)
    with mp.queueing_bounded(WWID, grace=0.1, check_every=0.02), mp.queueing_bounded(WWID, grace=0.1):
        time.sleep(0.5)
    assert runner.calls.count(("multipathd", "disablequeueing", "map", WWID)) == 1


def test_a_map_left_with_no_paths_at_all_counts_as_pathless(tmp_path: Path) -> None:
    dev, sys_ = make_map(tmp_path, [])
    runner = FakeRunner()
    runner.on(["multipathd", "show", "paths"], stdout="")
    assert Multipath(runner, dev=dev, sysfs=sys_).has_usable_path(WWID) is False
    dev2, sys2 = make_map(tmp_path / "b", ["sdb"])  # paths in sysfs that multipathd does not list
    assert Multipath(runner, dev=dev2, sysfs=sys2).has_usable_path(WWID) is None


def test_multipathd_saying_fail_is_not_a_stopped_queue() -> None:
    runner = FakeRunner()
    runner.on(["multipathd", "disablequeueing"], stdout="fail\n")
    runner.on(["dmsetup", "message"], returncode=1)
    assert Multipath(runner).stop_queueing(WWID) is False
    assert runner.calls[-1] == ("dmsetup", "message", WWID, "0", "fail_if_no_path")


def test_bounds_of_two_maps_run_side_by_side_even_when_nested(tmp_path: Path) -> None:
    """The unstage's bound and the detach's bound inside it are one watch; neither may hold what
    another volume's detach needs (a shared lock held across the body would serialise the node)."""
    dev, sys_ = make_map(tmp_path, ["sdb"])
    mp = Multipath(FakeRunner(), dev=dev, sysfs=sys_)
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with mp.queueing_bounded(WWID, grace=30), mp.queueing_bounded(WWID, grace=30):
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=first)
    worker.start()
    assert inside.wait(2)
    start = time.monotonic()
    with mp.queueing_bounded("36001405" + "b" * 25, grace=30):
        pass
    assert time.monotonic() - start < 1, "another map's detach waited for this one"
    release.set()
    worker.join(5)


def test_a_multipathd_that_stops_answering_neither_resets_the_count_nor_holds_queueing_for_ever(
        tmp_path: Path) -> None:
    """With multipathd gone nothing ends the queueing: device-mapper is asked for the path states
    and told to fail queued I/O itself."""
    dev, sys_ = make_map(tmp_path, ["sdb", "sdc"])
    runner = FakeRunner()
    runner.on(["multipathd"], returncode=1, stdout="can't connect")
    runner.on(["dmsetup", "status", WWID], stdout="0 131072 multipath 2 0 0 0 1 1 E 0 2 0 8:16 F 1 0 1 8:32 F 1 0 1\n")
    mp = Multipath(runner, dev=dev, sysfs=sys_)
    assert mp.has_usable_path(WWID) is False
    with mp.queueing_bounded(WWID, grace=0.1, check_every=0.02):
        time.sleep(0.4)
    assert ("dmsetup", "message", WWID, "0", "fail_if_no_path") in runner.calls
    runner.on(["dmsetup", "status", WWID], stdout="0 131072 multipath 2 0 0 0 1 1 A 0 2 0 8:16 A 0 0 1 8:32 F 1 0 1\n")
    assert mp.has_usable_path(WWID) is True
    runner.on(["dmsetup", "status"], returncode=1)
    assert mp.has_usable_path(WWID) is None


def test_a_detach_that_fails_after_stopping_the_queueing_turns_it_back_on(tmp_path: Path) -> None:
    """The map stays (busy), and whatever still uses it must ride out the next outage again."""
    mp, runner = map_with_paths(tmp_path, ["sdb"], f"{WWID} sdb failed faulty\n")
    with pytest.raises(MapBusy), mp.queueing_bounded(WWID, grace=0.05, check_every=0.01):
        time.sleep(0.3)
        raise MapBusy(("multipath", "-f", WWID), 1, "map in use", ())
    calls = runner.calls
    assert calls.index(("multipathd", "disablequeueing", "map", WWID)) < calls.index(
        ("multipathd", "restorequeueing", "map", WWID))
