"""The node under faults, with fakes at the runner, sysfs and mount-table seams: each test names the
finding of issue 10 it covers and sets up the state the defect needs (the same behaviours are
proven on the real kernel in tests/testbed/test_node_faults.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi.base.errors import Unavailable
from csi_iscsi.csi import csi_pb2
from tests.unit.test_node import CTX, VID, WWID, NodeWorld, mount_cap

Mode = csi_pb2.VolumeCapability.AccessMode


@pytest.fixture
def world(tmp_path: Path) -> Iterator[NodeWorld]:
    w = NodeWorld(tmp_path)
    yield w
    w.channel.close()
    w.server.stop(0)


def block_cap() -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                    access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))


def logins(world: NodeWorld) -> int:
    return sum(1 for c in world.runner.calls if c[0] == "iscsiadm" and "--login" in c)


def left_on_host(world: NodeWorld) -> list[str]:
    """What the fake host still holds of the volume."""
    found = []
    if world.logged_in:
        found.append("sessions")
    if (world.dev / "mapper" / WWID).exists():
        found.append("map")
    found += [f"device {d}" for d in ("sdb", "sdc") if (world.sys / "block" / d).exists()]
    if any(line.split()[4].startswith(str(world.tmp)) for line in world.mountinfo.read_text().splitlines()[1:]):
        found.append("mount")
    if (world.tmp / "state" / f"{VID}.json").exists():
        found.append("stage state")
    deleted = any(c[0] == "iscsiadm" and c[-2:] == ("-o", "delete") for c in world.runner.calls)
    created = any(c[0] == "iscsiadm" and c[-2:] == ("-o", "new") for c in world.runner.calls)
    if created and not deleted:
        found.append("node records")
    return found


# Finding 1: a read error never formats -------------------------------------------------------------

def test_blkid_finding_nothing_on_a_device_that_holds_data_does_not_format(world: NodeWorld) -> None:
    # blkid exits 2 printing nothing both for "no signature" and for "could not read": here the
    # device holds data all the same (an old filesystem blkid could not read).
    (world.dev / "dm-0").write_bytes(b"\0" * 1024 + b"\x53\xef" + b"data" * 1000)
    with pytest.raises(grpc.RpcError) as err:
        world.stage()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not any(c[0].startswith("mkfs") for c in world.runner.calls)


def test_a_device_the_driver_cannot_read_is_never_formatted(world: NodeWorld) -> None:
    (world.dev / "dm-0").unlink()
    (world.dev / "dm-0").mkdir()  # reading it fails (EISDIR), as a device with a dead path does (EIO)
    with pytest.raises(grpc.RpcError) as err:
        world.stage()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    assert not any(c[0].startswith("mkfs") for c in world.runner.calls)


# Finding 2: "already staged" is proven, not read from a file ------------------------------------------

def test_a_block_restage_after_a_reboot_logs_in_again(world: NodeWorld) -> None:
    world.stage(cap=block_cap())
    before = logins(world)
    # A reboot as the node sees it: no sessions, no map, no devices; the state file survived.
    world.logged_in = False
    world._session_names(present=False)
    (world.dev / "mapper" / WWID).unlink()
    world.stage(cap=block_cap())
    assert logins(world) > before
    assert (world.dev / "mapper" / WWID).exists()


# Finding 3: a pod never gets the empty staging directory ----------------------------------------------

def test_publish_refuses_a_staging_path_the_volume_is_not_mounted_on(world: NodeWorld) -> None:
    world.stage()
    world.runner.on(["multipath", "-f"], returncode=1)  # the map is held open by someone
    with pytest.raises(grpc.RpcError) as err:
        world.unstage()
    assert err.value.code() != grpc.StatusCode.OK
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=VID, staging_target_path=f"{world.tmp}/staging", target_path=f"{world.tmp}/pod",
            volume_capability=mount_cap()))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# Finding 13: a failed stage undoes what it did ------------------------------------------------------

def test_a_stage_that_fails_after_login_leaves_nothing(world: NodeWorld) -> None:
    world.runner.on(["blkid"], stdout="TYPE=xfs\n")  # the volume holds xfs; ext4 is asked for
    with pytest.raises(grpc.RpcError) as err:
        world.stage()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert left_on_host(world) == []


# Finding 14: a read-only publish killed half way converges -------------------------------------------

def test_a_rw_bind_left_by_a_crash_is_made_read_only_by_the_retry(world: NodeWorld) -> None:
    world.stage()
    target = f"{world.tmp}/pods/p1/mount"
    Path(target).mkdir(parents=True)
    # What a plugin killed between `mount --bind` and the read-only remount leaves behind.
    world.runner.run(["mount", "--bind", f"{world.tmp}/staging", target])
    world.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=VID, staging_target_path=f"{world.tmp}/staging", target_path=target,
        volume_capability=mount_cap(), readonly=True))
    tops = [line for line in world.mountinfo.read_text().splitlines() if line.split()[4] == target]
    assert len(tops) == 1 and " ro " in tops[0]


# Smaller: the map flush obeys --detach-timeout -----------------------------------------------------

def test_a_busy_map_does_not_hold_unstage_past_the_detach_timeout(world: NodeWorld) -> None:
    world.stage()
    world.runner.on(["multipath", "-f"], returncode=1)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError):
        world.unstage()  # the world's detach timeout is 2 s
    assert time.monotonic() - start < 4


# Finding 17: bounded messages ------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["volume_id", "staging", "iqn", "portals", "wwid", "fs"])
def test_no_node_answer_echoes_a_request_field_whole(world: NodeWorld, field: str) -> None:
    huge = "x" * 20000
    ctx = dict(CTX)
    req = csi_pb2.NodeStageVolumeRequest(volume_id=VID, staging_target_path=f"{world.tmp}/staging",
                                         volume_capability=mount_cap(), publish_context=ctx)
    if field == "volume_id":
        req.volume_id = "csi-" + huge
    elif field == "staging":
        req.staging_target_path = "/" + huge
    elif field == "fs":
        req.volume_capability.mount.fs_type = huge
    else:
        req.publish_context[{"iqn": "targetIQN", "portals": "portals", "wwid": "wwid"}[field]] = huge
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodeStageVolume(req)
    assert err.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(err.value.details()) < 1024


# Found by review: a failed re-stage of a volume in use, an interrupted mkfs, a publish undo --------

def fake_users(world: NodeWorld):  # type: ignore[no-untyped-def]
    """Filesystems.users for the fake host, whose /dev entries are plain files: a device is in use when
    the fake mount table has it (or its map) mounted."""
    def users(self: object, device: str, allowed_holders: object = ()) -> list[str]:
        sources = [line.split(" - ")[1].split()[1] for line in world.mountinfo.read_text().splitlines()[1:]]
        names = {device, os.path.realpath(device)}
        if device.endswith(("/sdb", "/sdc")):  # the paths under the map
            names.add(str(world.dev / "mapper" / WWID))
        return ["mounted"] if names & set(sources) else []
    return users


def sessions_recovering(world: NodeWorld) -> None:
    for sid in (1, 2):
        (world.sys / "class/iscsi_session" / f"session{sid}" / "state").write_text("FAILED\n")


def detach_calls(world: NodeWorld) -> list[tuple[str, ...]]:
    return [c for c in world.runner.calls if c[0] == "delete" or "--logout" in c or c[:2] == ("multipath", "-f")
            or (c[0] == "iscsiadm" and c[-1] == "delete")]


def test_a_failed_restage_of_a_volume_in_use_never_detaches_it(world: NodeWorld,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    world.stage()
    monkeypatch.setattr("csi_iscsi.host.filesystem.Filesystems.users", fake_users(world))
    sessions_recovering(world)  # after a kubelet restart during a target blip: "already staged" is not proven
    world.runner.on(["multipathd", "show", "daemon"], returncode=1)  # and this re-stage fails early
    world.volumes._mode = "preferred"
    world.runner.on(["iscsiadm", "-m", "node", "-T"], returncode=8)  # logins fail: the portal is down
    world.runner.calls.clear()
    with pytest.raises(grpc.RpcError):
        world.stage()
    assert detach_calls(world) == []
    assert (world.tmp / "state" / f"{VID}.json").exists()
    assert world.volumes.staged(VID) is not None  # its earlier state is back: publishes go on working


def test_a_failed_single_path_portal_never_detaches_a_volume_in_use(world: NodeWorld,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    world.volumes._multipath = None
    world.volumes._mode = "off"
    world.formatted = True  # one path: the device is /dev/sdb, which this fake host cannot read
    world.stage()
    monkeypatch.setattr("csi_iscsi.host.filesystem.Filesystems.users", fake_users(world))
    sessions_recovering(world)

    def attach(*args: object, **kwargs: object) -> None:
        raise Unavailable("login to that portal failed")

    monkeypatch.setattr(world.volumes._single, "attach", attach)
    world.runner.calls.clear()
    with pytest.raises(grpc.RpcError):
        world.stage()
    assert detach_calls(world) == []


def test_a_mkfs_cut_short_is_run_again_not_refused_forever(world: NodeWorld) -> None:
    world.runner.on(["mkfs.ext4"], returncode=1, times=1)  # killed half way (or timed out)
    with pytest.raises(grpc.RpcError):
        world.stage()
    # What the dead mkfs wrote: not blank any more, and blkid sees no filesystem yet.
    (world.dev / "dm-0").write_bytes(b"\1" * 4096)
    world.stage()
    assert sum(1 for c in world.runner.calls if c[0] == "mkfs.ext4") == 2


def test_a_failed_read_only_bind_leaves_no_mount_at_the_pod_path(world: NodeWorld) -> None:
    world.stage()
    target = f"{world.tmp}/pods/p1/mount"

    def bind_then_fail(argv: tuple[str, ...]) -> tuple[int, str] | None:
        if argv[:2] == ("mount", "--bind"):
            with world.mountinfo.open("a") as f:  # the bind happened, the command still failed
                f.write(f"9 1 253:0 / {target} rw - ext4 {argv[-2]} rw\n")
            return 32, ""
        return None

    world.runner.responders.insert(0, bind_then_fail)
    with pytest.raises(grpc.RpcError):
        world.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=VID, staging_target_path=f"{world.tmp}/staging", target_path=target,
            volume_capability=mount_cap(), readonly=True))
    assert target not in world.mountinfo.read_text() and not Path(target).exists()


def test_a_foreign_mount_at_the_pod_path_is_not_taken_for_the_volume(world: NodeWorld) -> None:
    world.stage()
    target = f"{world.tmp}/pods/p1/mount"
    Path(target).mkdir(parents=True)
    with world.mountinfo.open("a") as f:  # e.g. a bare staging directory bound by an older version
        f.write(f"12 1 8:1 /var/lib/kubelet/x {target} rw - ext4 /dev/vda rw\n")
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=VID, staging_target_path=f"{world.tmp}/staging", target_path=target,
            volume_capability=mount_cap(), readonly=True))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_node_expand_that_did_not_reach_the_size_asked_for_says_so(world: NodeWorld) -> None:
    world.stage()
    (world.sys / "block/dm-0/size").write_text(str(64 * 1024 * 1024 // 512))
    with pytest.raises(grpc.RpcError) as err:
        world.stub.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=VID, volume_path=f"{world.tmp}/staging",
            capacity_range=csi_pb2.CapacityRange(required_bytes=128 * 1024 * 1024)))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "ControllerExpandVolume" in err.value.details()


def test_a_stale_mkfs_marker_never_formats_over_a_filesystem_blkid_missed_once(world: NodeWorld) -> None:
    """A marker a failed stage left long ago; meanwhile another node made a filesystem on the volume.
    Here blkid fails once (exit 2, as on a read error): the marker must not let mkfs run over it."""
    state = world.tmp / "state" / f"{VID}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"volume_id": VID, "target_iqn": CTX["targetIQN"], "portals": CTX["portals"].split(","),
                                 "lun": 0, "wwid": WWID, "staging_path": f"{world.tmp}/staging",
                                 "access_type": "mount", "fs_type": "ext4", "device": "", "phase": "attaching",
                                 "mkfs_started": True}))
    (world.dev / "dm-0").write_bytes(b"\0" * 1024 + b"\x53\xef" + b"data" * 1000)
    world.runner.on(["blkid"], stdout="TYPE=ext4\n")
    world.runner.on(["blkid"], returncode=2, times=1)
    world.stage()
    assert not any(c[0].startswith("mkfs") for c in world.runner.calls)


def test_an_unstage_after_a_mkfs_cut_short_keeps_its_marker(world: NodeWorld) -> None:
    world.runner.on(["mkfs.ext4"], returncode=1, times=1)
    with pytest.raises(grpc.RpcError):
        world.stage()
    (world.dev / "dm-0").write_bytes(b"\1" * 4096)  # what the dead mkfs wrote
    world.unstage()  # kubelet's way out when the pod went away meanwhile
    world.stage()
    assert sum(1 for c in world.runner.calls if c[0] == "mkfs.ext4") == 2
