"""The exact order of attach and detach steps, with fakes at the runner and sysfs seams."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from csi_iscsi.base.errors import FailedPrecondition, Unavailable
from csi_iscsi.base.runner import CommandFailed
from csi_iscsi.host.attach import Attacher, AttachTimeouts
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.scsi import Scsi
from tests.fakes import FakeRunner
from tests.unit.test_scsi_multipath import WWID, make_sysfs

IQN = "iqn.2026-11.io.csi-iscsi:csi-" + "a" * 32
PORTALS = ["127.0.0.11:3260", "127.0.0.12:3260"]


class RecordingScsi(Scsi):
    """Scsi over a fake sysfs that records deletes in the runner's call log and makes them real."""

    def __init__(self, sysfs: Path, runner: FakeRunner) -> None:
        super().__init__(sysfs)
        self._runner = runner
        self._root = sysfs

    def delete(self, device: str) -> None:
        self._runner.calls.append(("delete", device))
        shutil.rmtree(self._root / "block" / device, ignore_errors=True)


@pytest.fixture
def world(tmp_path: Path) -> tuple[FakeRunner, Attacher, Path]:
    sys_ = make_sysfs(tmp_path, 1, 3, {"sdb": (0, WWID)}, IQN, PORTALS[0])
    make_sysfs(tmp_path, 2, 4, {"sdc": (0, WWID)}, IQN, PORTALS[1])
    dev = tmp_path / "dev"
    (dev / "mapper").mkdir(parents=True)
    (dev / "dm-0").write_text("")
    os.symlink(dev / "dm-0", dev / "mapper" / WWID)
    for s in ("sdb", "sdc"):
        (sys_ / "block/dm-0/slaves").mkdir(parents=True, exist_ok=True)
        (sys_ / "block/dm-0/slaves" / s).write_text("")
    runner = FakeRunner()
    runner.on(["iscsiadm", "-m", "node", "-T", IQN], stdout="".join(f"{p},1 {IQN}\n" for p in PORTALS))

    def flush(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:2] == ("multipath", "-f"):
            (dev / "mapper" / WWID).unlink()
            return 0, ""
        return None

    runner.responders.insert(0, flush)
    attacher = Attacher(Iscsiadm(runner), RecordingScsi(sys_, runner), Multipath(runner, dev=dev, sysfs=sys_),
                        SessionSettings(), AttachTimeouts(device=0.5, multipath_map=0.5, detach=2),
                        poll_interval=0.01)
    return runner, attacher, sys_


def steps(runner: FakeRunner) -> list[str]:
    """The call log without the per-setting record updates."""
    out = []
    for c in runner.calls:
        if c[0] == "iscsiadm" and "update" in c:
            continue
        if c[0] == "iscsiadm":
            out.append(" ".join(x for x in c[1:] if x not in (IQN, "-T", "-m", "-p")))
        else:
            out.append(" ".join(c))
    return out


def map_appears_at_login(runner: FakeRunner, sys_: Path) -> None:
    """The map is not there before the attach: multipathd builds it once the paths come."""
    hidden = sys_ / "hidden-dm-0"
    (sys_ / "block/dm-0").rename(hidden)

    def login(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if "--login" in argv:
            with contextlib.suppress(FileNotFoundError):  # the two portals log in at once
                hidden.rename(sys_ / "block/dm-0")
        return None

    runner.responders.insert(0, login)


def test_attach_order(world: tuple[FakeRunner, Attacher, Path]) -> None:
    runner, attacher, sys_ = world
    map_appears_at_login(runner, sys_)
    attachment = attacher.attach(IQN, PORTALS, 0, WWID)
    assert attachment.device.endswith(f"/mapper/{WWID}")
    assert attachment.paths == ("sdb", "sdc")
    got = steps(runner)
    # The WWID goes into multipath's wwids file before any path appears: multipathd builds this
    # volume's map under the node's own find_multipaths (strict on Debian), and no other disk's.
    assert got[:1] == [f"multipath -a {WWID}"]
    assert got[1:3] == ["node 127.0.0.11:3260 -o new", "node 127.0.0.12:3260 -o new"]
    assert sorted(got[3:5]) == ["node 127.0.0.11:3260 --login", "node 127.0.0.12:3260 --login"]
    assert got[5:] == []  # sessions come from sysfs, not another process
    assert not any("discovery" in s for s in got)
    assert (sys_ / "class/scsi_host/host3/scan").read_text() == "- - 0"
    assert (sys_ / "class/scsi_host/host4/scan").read_text() == "- - 0"


def test_detach_order_is_map_then_devices_then_logout_then_records(
        world: tuple[FakeRunner, Attacher, Path]) -> None:
    runner, attacher, _ = world
    attacher.detach(IQN, 0, WWID)
    assert steps(runner) == [
        f"multipath -f {WWID}",
        "delete sdb", "delete sdc",
        f"multipath -w {WWID}",  # the volume has left: its WWID no longer claims anything
        "session -r 1 --logout", "session -r 2 --logout",
        "node -o delete",
    ]


def test_a_session_that_ends_during_its_logout_is_not_a_failed_detach(
        world: tuple[FakeRunner, Attacher, Path]) -> None:
    """iscsiadm fails the logout of a session that ended while it looked (its target dropped it):
    the session is gone, which is what the detach wanted; one still there is a failure."""
    runner, attacher, sys_ = world

    def ends_during_logout(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:5] == ("iscsiadm", "-m", "session", "-r", "1"):
            shutil.rmtree(sys_ / "class/iscsi_session/session1")
            return 22, ""
        return None

    runner.responders.insert(0, ends_during_logout)
    attacher.detach(IQN, 0, WWID)
    assert steps(runner)[-2:] == ["session -r 2 --logout", "node -o delete"]
    runner.on(["iscsiadm", "-m", "session", "-r", "2"], returncode=9)
    with pytest.raises(CommandFailed):
        attacher.detach(IQN, 0, WWID)


def fake_map(sys_: Path, dm: str, name: str, wwid: str, slaves: list[str]) -> None:
    (sys_ / "block" / dm / "dm").mkdir(parents=True)
    (sys_ / "block" / dm / "dm/name").write_text(name + "\n")
    (sys_ / "block" / dm / "dm/uuid").write_text(f"mpath-{wwid}\n")
    (sys_ / "block" / dm / "slaves").mkdir()
    for path in slaves:
        (sys_ / "block" / dm / "slaves" / path).write_text("")
        (sys_ / "block" / path / "holders").mkdir(exist_ok=True)
        os.symlink(sys_ / "block" / dm, sys_ / "block" / path / "holders" / dm)


def test_a_map_multipathd_builds_again_during_the_detach_is_flushed_before_its_paths_go(
        world: tuple[FakeRunner, Attacher, Path]) -> None:
    """multipathd behind on its udev events builds the map again after the first flush (here as
    mpath7, user_friendly_names): it is flushed before the path under it is deleted; a map of the
    WWID left with no paths at the end is flushed too; a map with another node's paths is not."""
    runner, attacher, sys_ = world

    def flush_removes_it(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:2] == ("multipath", "-f") and argv[2] in ("mpath7", "mpath8"):
            dm = {"mpath7": "dm-7", "mpath8": "dm-8"}[argv[2]]
            for holder in sys_.glob(f"block/*/holders/{dm}"):
                holder.unlink()
            shutil.rmtree(sys_ / "block" / dm)
            return 0, ""
        return None

    runner.responders.insert(0, flush_removes_it)
    scsi_delete = attacher._scsi.delete

    def delete(device: str) -> None:
        scsi_delete(device)
        if device == "sdb":  # what multipathd does while the detach goes on
            fake_map(sys_, "dm-7", "mpath7", WWID, ["sdc"])
            fake_map(sys_, "dm-8", "mpath8", WWID, [])
            (sys_ / "block/sdx").mkdir()
            fake_map(sys_, "dm-9", "mpath9", WWID, ["sdx"])

    attacher._scsi.delete = delete  # type: ignore[method-assign]
    attacher.detach(IQN, 0, WWID)
    assert steps(runner) == [f"multipath -f {WWID}", "delete sdb", "multipath -f mpath7", "delete sdc",
                             "multipath -f mpath8", "session -r 1 --logout", "session -r 2 --logout",
                             "node -o delete"]
    assert (sys_ / "block/dm-9").exists()


def test_detach_leaves_other_targets_alone(world: tuple[FakeRunner, Attacher, Path]) -> None:
    runner, attacher, _ = world
    other = "iqn.2026-11.io.csi-iscsi:csi-" + "b" * 32
    attacher.detach(other, 0, "36001405" + "b" * 25)
    assert all(IQN not in " ".join(c) and WWID not in " ".join(c) for c in runner.calls)
    assert not any(c[0] == "delete" or c[:2] == ("multipath", "-f") or "--logout" in c for c in runner.calls)


def test_one_dead_portal_is_tolerated(world: tuple[FakeRunner, Attacher, Path]) -> None:
    runner, attacher, _ = world
    runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", PORTALS[1], "--login"], returncode=8)
    (world[2] / "class/iscsi_session/session2/targetname").unlink()  # that login never made a session
    attachment = attacher.attach(IQN, PORTALS, 0, WWID)
    assert attachment.failed_portals == (PORTALS[1],)
    assert attachment.paths == ("sdb",)


def test_every_portal_dead_is_unavailable_and_leaves_no_records(world: tuple[FakeRunner, Attacher, Path]) -> None:
    runner, attacher, _ = world
    runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p"], returncode=8)
    for p in PORTALS:
        runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", p, "-o", "new"], returncode=0)
        runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", p, "-o", "update"], returncode=0)
    with pytest.raises(Unavailable):
        attacher.attach(IQN, PORTALS, 0, WWID)
    assert steps(runner)[-1] == "node -o delete"


def test_a_path_with_another_wwid_is_refused(world: tuple[FakeRunner, Attacher, Path]) -> None:
    _, attacher, sys_ = world
    (sys_ / "block/sdc/device/wwid").write_text("naa.6001405" + "c" * 25)
    with pytest.raises(FailedPrecondition, match="not this volume"):
        attacher.attach(IQN, PORTALS, 0, WWID)


def test_sessions_of_another_node_sharing_iscsid_are_not_ours(tmp_path: Path) -> None:
    sys_ = make_sysfs(tmp_path, 1, 3, {"sdb": (0, WWID)}, IQN, PORTALS[0])
    make_sysfs(tmp_path, 2, 4, {"sdc": (0, WWID)}, IQN, PORTALS[1])
    (sys_ / "class/iscsi_session/session1/initiatorname").write_text("iqn.2026-11.io.example:me\n")
    (sys_ / "class/iscsi_session/session2/initiatorname").write_text("iqn.2026-11.io.example:other-node\n")
    runner = FakeRunner()
    attacher = Attacher(Iscsiadm(runner), RecordingScsi(sys_, runner), None,
                        SessionSettings(initiator_name="iqn.2026-11.io.example:me"),
                        AttachTimeouts(detach=2), poll_interval=0.01)
    assert [s.sid for s in attacher.sessions(IQN)] == [1]
    attacher.detach(IQN, 0, WWID)
    assert ("delete", "sdc") not in runner.calls and ("delete", "sdb") in runner.calls
    logouts = [c for c in runner.calls if "--logout" in c]
    assert logouts == [("iscsiadm", "-m", "session", "-r", "1", "--logout")]  # never the other node's session
    delete = next(c for c in runner.calls if c[-2:] == ("-o", "delete"))
    assert "-I" in delete  # and only this node's records, since another node still has the target


def test_reattaching_a_map_a_failed_detach_left_restores_its_queueing(world: tuple[FakeRunner, Attacher, Path]) -> None:
    """A detach with no usable path stops the map's queueing; if it then failed and the map stayed,
    the next attach must turn queueing back on, or a target restart would fail the pod's I/O."""
    runner, attacher, _ = world  # the fake's map is there before the login
    attacher.attach(IQN, PORTALS, 0, WWID)
    assert steps(runner)[-1] == f"multipathd restorequeueing map {WWID}"


def test_the_wwid_stays_in_the_wwids_file_while_any_device_carries_it(world: tuple[FakeRunner, Attacher, Path],
                                                                       tmp_path: Path) -> None:
    """Another node on this kernel (kind) attaching the same volume needs the line for its paths."""
    runner, attacher, sys_ = world
    other = sys_ / "block/sdx/device"
    other.mkdir(parents=True)
    (other / "wwid").write_text(f"naa.{WWID[1:]}\n")
    attacher.detach(IQN, 0, WWID)
    assert ("multipath", "-w", WWID) not in runner.calls


def test_a_failing_wwids_update_does_not_fail_the_attach(world: tuple[FakeRunner, Attacher, Path]) -> None:
    runner, attacher, sys_ = world
    map_appears_at_login(runner, sys_)
    runner.on(["multipath", "-a"], returncode=1)  # a read-only /etc/multipath, say
    assert attacher.attach(IQN, PORTALS, 0, WWID).paths == ("sdb", "sdc")
