"""The node under faults, with fakes at the runner, sysfs and mount-table seams: each test names the
finding of issue 10 it covers and sets up the state the defect needs (the same behaviours are
proven on the real kernel in tests/testbed/test_node_faults.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

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
