"""The node servicer and NodeVolumes with fakes at the runner, sysfs and mount-table seams: the exact
order of stage and unstage steps, idempotency, and request checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.host.attach import Attacher, AttachTimeouts
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from csi_iscsi.host.mounts import MountTable
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.node_volumes import NodeVolumes
from csi_iscsi.host.stage_state import StageStateStore
from csi_iscsi.server import CsiServer, Services
from csi_iscsi.servicers.identity import IdentityServicer
from csi_iscsi.servicers.node import NodeIdentity, NodeServicer
from tests.fakes import FakeRunner
from tests.unit.test_attach import RecordingScsi
from tests.unit.test_scsi_multipath import make_sysfs

VID = contract.volume_id_for_name("pvc-node")
IQN = contract.target_iqn(VID)
WWID = contract.wwid(VID)
PORTALS = ["127.0.0.11:3260", "127.0.0.12:3260"]
CTX = {"targetIQN": IQN, "portals": ",".join(PORTALS), "lun": "0", "wwid": WWID, "authentication": "none"}
Mode = csi_pb2.VolumeCapability.AccessMode


def mount_cap(fs: str = "ext4") -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs),
                                    access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))


class NodeWorld:
    """A host made of fakes: iscsiadm answers from a script, mount/umount edit a mountinfo file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sys = make_sysfs(tmp, 1, 3, {"sdb": (0, WWID)}, IQN, PORTALS[0])
        make_sysfs(tmp, 2, 4, {"sdc": (0, WWID)}, IQN, PORTALS[1])
        self._session_names(present=False)
        for name in ("sdb", "sdc"):  # no devices before a login brings them
            shutil.rmtree(self.sys / "block" / name)
        self.dev = tmp / "dev"
        (self.dev / "mapper").mkdir(parents=True)
        (self.dev / "dm-0").write_text("")
        (self.sys / "block/dm-0/slaves").mkdir(parents=True)
        for s in ("sdb", "sdc"):
            (self.sys / "block/dm-0/slaves" / s).write_text("")
        self.mountinfo = tmp / "mountinfo"
        self.mountinfo.write_text("1 0 8:1 / / rw - ext4 /dev/vda rw\n")
        self.formatted = False
        self.runner = FakeRunner()
        self.logged_in = False
        self.runner.responders.append(self.respond)
        scsi = RecordingScsi(self.sys, self.runner)
        iscsiadm = Iscsiadm(self.runner)
        multipath = Multipath(self.runner, dev=self.dev, sysfs=self.sys)
        timeouts = AttachTimeouts(device=0.5, multipath_map=0.5, detach=2)
        self.volumes = NodeVolumes(
            self.runner, iscsiadm, scsi, multipath,
            Attacher(iscsiadm, scsi, multipath, SessionSettings(), timeouts, poll_interval=0.01),
            Attacher(iscsiadm, scsi, None, SessionSettings(), timeouts, poll_interval=0.01),
            Filesystems(self.runner, MountTable(self.mountinfo)), StageStateStore(tmp / "state"))
        servicer = NodeServicer(NodeIdentity(NodeId("w1", "iqn.1993-08.org.debian:01:w1"), "default", 0),
                                self.volumes)
        self.server = CsiServer(Services(identity=IdentityServicer(lambda: (True, "")), node=servicer),
                                f"unix://{tmp}/n.sock")
        self.server.start()
        self.channel = grpc.insecure_channel(f"unix:{tmp}/n.sock")
        self.stub = csi_pb2_grpc.NodeStub(self.channel)

    def _session_names(self, present: bool) -> None:
        """The kernel's view of the two sessions: there after a login, gone after the logout."""
        for sid in (1, 2):
            name = self.sys / "class/iscsi_session" / f"session{sid}" / "targetname"
            state = name.with_name("state")
            if present:
                name.write_text(IQN + "\n")
                state.write_text("LOGGED_IN\n")
            else:
                name.unlink(missing_ok=True)
                state.unlink(missing_ok=True)

    def respond(self, argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[0] == "iscsiadm" and "--login" in argv:
            self.logged_in = True
            self._session_names(present=True)
            for name in ("sdb", "sdc"):  # the kernel brings the devices back with the session
                device = self.sys / "block" / name / "device"
                device.mkdir(parents=True, exist_ok=True)
                (device / "wwid").write_text(f"naa.{WWID[1:]}\n")
            with contextlib.suppress(FileExistsError):  # the two portals log in concurrently
                os.symlink(self.dev / "dm-0", self.dev / "mapper" / WWID)
        if argv[:2] == ("iscsiadm", "-m") and "--logout" in argv:  # per session, portal or target-wide
            self.logged_in = False
            self._session_names(present=False)
            return 0, ""
        if argv[:3] == ("iscsiadm", "-m", "session"):
            if not self.logged_in:
                return 21, ""
            return 0, "".join(f"tcp: [{i}] {p},1 {IQN} (non-flash)\n" for i, p in enumerate(PORTALS, 1))
        if argv[:4] == ("iscsiadm", "-m", "node", "-T") and len(argv) == 5:
            return 0, "".join(f"{p},1 {IQN}\n" for p in PORTALS)
        if argv[0] == "blkid":
            return (0, "TYPE=ext4\n") if self.formatted else (2, "")
        if argv[0].startswith("mkfs"):
            self.formatted = True
        if argv[0] == "mount":
            source, target = argv[-2], argv[-1]
            opts = "ro" if "ro" in (argv[2].split(",") if len(argv) > 2 else []) else "rw"
            if "remount,bind,ro" in argv:
                lines = self.mountinfo.read_text().splitlines()
                lines[-1] = lines[-1].replace(" rw - ", " ro - ")
                self.mountinfo.write_text("\n".join(lines) + "\n")
                return 0, ""
            with self.mountinfo.open("a") as f:
                f.write(f"9 1 253:0 / {target} {opts} - ext4 {source} rw\n")
        if argv[0] == "umount":
            lines = self.mountinfo.read_text().splitlines()
            for i in range(len(lines) - 1, -1, -1):
                if lines[i].split()[4] == argv[1]:
                    del lines[i]
                    break
            self.mountinfo.write_text("\n".join(lines) + "\n")
        if argv[:2] == ("multipath", "-f"):
            (self.dev / "mapper" / WWID).unlink()
        return None

    def steps(self) -> list[str]:
        keep = []
        for c in self.runner.calls:
            if c[0] == "iscsiadm" and ("update" in c or (c[1:3] == ("-m", "session") and "--logout" not in c)
                                       or len(c) == 5):
                continue
            if c[0] == "iscsiadm":
                c = tuple(x for x in c if x not in (IQN, "iscsiadm", "-T", "-m", "-p", "node"))
            keep.append(" ".join(c))
        return keep

    def stage(self, staging: str | None = None, cap: csi_pb2.VolumeCapability | None = None,
              ctx: dict[str, str] | None = None, secrets: dict[str, str] | None = None) -> None:
        self.stub.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=VID, staging_target_path=staging or f"{self.tmp}/staging", volume_capability=cap or mount_cap(),
            publish_context=ctx or CTX, secrets=secrets or {}))

    def unstage(self) -> None:
        self.stub.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=VID,
                                                                     staging_target_path=f"{self.tmp}/staging"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[NodeWorld]:
    w = NodeWorld(tmp_path)
    yield w
    w.channel.close()
    w.server.stop(0)


def test_stage_order_records_logins_map_mkfs_mount(world: NodeWorld) -> None:
    world.stage()
    steps = world.steps()
    device = f"{world.dev}/mapper/{WWID}"
    # multipathd is asked first, so a node without it refuses before logging in anywhere.
    assert steps[0] == "multipathd show daemon"
    assert steps[1] == f"multipath -a {WWID}"  # before any path appears: multipathd will build this map
    assert steps[2:4] == ["127.0.0.11:3260 -o new", "127.0.0.12:3260 -o new"], steps
    assert sorted(steps[4:6]) == ["127.0.0.11:3260 --login", "127.0.0.12:3260 --login"]
    assert steps[6:] == [f"blkid -p -o export {device}", f"mkfs.ext4 -q {device}",
                         f"mount -t ext4 {device} {world.tmp}/staging"]
    assert not any("discovery" in s for s in steps)


def test_stage_twice_is_idempotent_and_never_formats_again(world: NodeWorld) -> None:
    world.stage()
    calls = len(world.runner.calls)
    world.stage()
    assert world.runner.calls[calls:] == []
    world.unstage()
    world.runner.calls.clear()
    world.stage()
    assert not any(c[0].startswith("mkfs") for c in world.runner.calls)


def test_unstage_order_umount_flush_delete_logout_forget(world: NodeWorld) -> None:
    world.stage()
    world.runner.calls.clear()
    world.unstage()
    assert world.steps() == [
        f"umount {world.tmp}/staging",
        f"multipath -f {WWID}",
        "delete sdb", "delete sdc",
        f"multipath -w {WWID}",
        "session -r 1 --logout", "session -r 2 --logout",
        "-o delete",
    ]
    assert not (world.tmp / "state" / f"{VID}.json").exists()
    world.runner.calls.clear()
    world.unstage()  # idempotent
    assert not any(c[0] in ("umount", "multipath", "delete") for c in world.runner.calls)


def test_publish_binds_once_and_unpublish_removes_the_path(world: NodeWorld) -> None:
    world.stage()
    target = f"{world.tmp}/pods/p1/mount"
    req = csi_pb2.NodePublishVolumeRequest(volume_id=VID, staging_target_path=f"{world.tmp}/staging",
                                           target_path=target, volume_capability=mount_cap(), readonly=True)
    world.stub.NodePublishVolume(req)
    world.stub.NodePublishVolume(req)
    binds = [c for c in world.runner.calls if c[:2] == ("mount", "--bind")]
    assert len(binds) == 1
    assert ("mount", "-o", "remount,bind,ro", target) in world.runner.calls
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=VID, staging_target_path=f"{world.tmp}/staging", target_path=target,
            volume_capability=mount_cap()))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    world.stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=VID, target_path=target))
    world.stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=VID, target_path=target))
    assert not Path(target).exists()


def test_publish_before_stage_is_failed_precondition(world: NodeWorld) -> None:
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=VID, staging_target_path=f"{world.tmp}/staging", target_path=f"{world.tmp}/t",
            volume_capability=mount_cap()))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("change", [
    {"staging": "relative/path"}, {"staging": "/a/../etc"}, {"ctx": dict(CTX, wwid="36001405" + "0" * 25)},
    {"ctx": dict(CTX, targetIQN="iqn.2026-11.io.other:x")}, {"ctx": dict(CTX, portals="evil;rm -rf /")},
    {"ctx": dict(CTX, authentication="chap")}, {"cap": mount_cap("btrfs")},
])
def test_bad_requests_are_refused_before_anything_runs(world: NodeWorld, change: dict[str, object]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        world.stage(**change)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert world.runner.calls == []


def test_unknown_volumes(world: NodeWorld) -> None:
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id="pvc-foreign", staging_target_path="/s", volume_capability=mount_cap(), publish_context=CTX))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    world.stub.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="pvc-foreign", staging_target_path="/s"))
    world.stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pvc-foreign", target_path="/t"))
    assert world.runner.calls == []
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=VID, volume_path="/x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_multipath_required_without_multipathd(world: NodeWorld) -> None:
    world.runner.on(["multipathd", "show", "daemon"], returncode=1)
    with pytest.raises(grpc.RpcError) as err:
        world.stage()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "multipathd is not running" in err.value.details()
    assert not any("--login" in c for c in world.runner.calls)


def test_stats_and_expand_treat_foreign_paths_as_unknown(world: NodeWorld) -> None:
    world.stage()
    for call, req in ((world.stub.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest),
                      (world.stub.NodeExpandVolume, csi_pb2.NodeExpandVolumeRequest)):
        for path in ("some/path", "/no/such/dir", "/a/../b"):
            with pytest.raises(grpc.RpcError) as err:
                call(req(volume_id=VID, volume_path=path))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, path
        with pytest.raises(grpc.RpcError) as err:
            call(req(volume_id=VID))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_volume_condition_counts_only_paths_that_are_down(world: NodeWorld) -> None:
    """Right after a login on a slow host multipathd's first check of a path may still run
    ("i/o pending"); that path is up, and the volume is not abnormal for it."""
    world.stage()
    staging = f"{world.tmp}/staging"

    def condition(paths: str) -> csi_pb2.VolumeCondition:
        world.runner.on(["multipathd", "show", "paths"], stdout=paths, times=1)
        return world.stub.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
            volume_id=VID, volume_path=staging)).volume_condition

    pending = condition(f"{WWID} sdb active i/o pending\n{WWID} sdc active ready\n")
    assert not pending.abnormal, pending.message
    down = condition(f"{WWID} sdb failed faulty\n{WWID} sdc active ready\n")
    assert down.abnormal and down.message == "1 of 2 paths are down: sdb (failed, faulty)"
    assert condition("").message == "multipathd reports no paths for the volume"
    # An orphan: multipathd knows the path by the WWID, but it is not under the map.
    orphan = condition(f"{WWID} sdb active ready\n{WWID} sdc active ready\n{WWID} sdd undef undef\n")
    assert orphan.abnormal and orphan.message == "1 of 3 paths are down: sdd (undef, undef)"
    unsynced = condition(f"{WWID} sdb undef ready\n{WWID} sdc active ready\n")  # under the map: not down
    assert not unsynced.abnormal, unsynced.message
    one = condition(f"{WWID} sdb active ready\n")
    assert one.abnormal and one.message.startswith("1 paths for 2 portals")


def test_unstage_against_a_dead_target_stops_queueing_so_umount_can_finish(world: NodeWorld) -> None:
    """With the target gone, umount writes back into a map that queues for minutes (what rides out
    a target restart): after half of --detach-timeout with no usable path the map's queueing is
    stopped, the queued writes fail, and umount and the detach finish within the bound."""
    world.stage()
    world.runner.on(["multipathd", "show", "paths"], stdout=f"{WWID} sdb failed faulty\n{WWID} sdc failed faulty\n")
    released = threading.Event()

    def umount_waits_on_the_queue(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:3] == ("multipathd", "disablequeueing", "map"):
            released.set()
            return 0, ""
        if argv[0] == "umount":
            assert released.wait(5), "umount held on queued I/O and nothing stopped the queueing"
        return None

    world.runner.responders.insert(0, umount_waits_on_the_queue)
    start = time.monotonic()
    world.unstage()
    assert time.monotonic() - start < 2.5  # this world's detach timeout is 2 s: 1 s of grace, then the rest
    got = world.steps()
    assert got.index(f"multipathd disablequeueing map {WWID}") < got.index(f"multipath -f {WWID}")
