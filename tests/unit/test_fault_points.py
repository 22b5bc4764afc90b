"""Fault points: the switch itself, the list kept in step with the code, and the controller's
transactions raised at every one of its points (with LIO faked): each failing call leaves only what
its retry or the CO's next call converges, and nothing is left after the reverse path. The same
matrix runs with kills instead of errors on the real kernel (tests/testbed/test_crash_matrix.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.base import faults
from csi_iscsi.base.faults import POINTS, InjectedFault, arm, fault_point, parse
from csi_iscsi.csi import csi_pb2
from csi_iscsi.lio.records import RecordStore
from tests.unit.test_controller import NODE, MiB, World
from tests.unit.test_node import VID as NODE_VID
from tests.unit.test_node import NodeWorld
from tests.unit.test_node import mount_cap as node_cap
from tests.unit.test_node_faults import left_on_host

SOURCE = Path(__file__).resolve().parents[2] / "csi_iscsi"
DOC = Path(__file__).resolve().parents[2] / "docs" / "failure-modes.md"


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    arm("")
    yield
    arm("")


def test_points_fire_once_and_only_when_armed() -> None:
    fault_point("stage.after_login")  # inert
    arm("stage.after_login=raise")
    with pytest.raises(InjectedFault):
        fault_point("stage.after_login")
    fault_point("stage.after_login")  # fired already
    with pytest.raises(ValueError):
        parse("stage.after_nothing=raise")
    with pytest.raises(ValueError):
        parse("stage.after_login=explode")
    assert faults.InjectedFault.code == grpc.StatusCode.INTERNAL


def test_every_point_in_the_code_is_listed_and_every_listed_point_is_in_the_code() -> None:
    used = set()
    for path in SOURCE.rglob("*.py"):
        used |= set(re.findall(r'fault_point\("([a-z_]+\.[a-z_]+)"\)', path.read_text()))
        used |= set(re.findall(r'fault="([a-z_]+\.[a-z_]+)"', path.read_text()))
    assert used == set(POINTS)


def test_the_failure_modes_table_has_a_row_per_point() -> None:
    rows = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", DOC.read_text(), flags=re.M))
    assert rows == set(POINTS)


# The controller's points, raised --------------------------------------------------------------------

@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop()


def memory_matches_disk(world: World) -> None:
    fresh = RecordStore(world.tmp / "state")
    assert [r.to_json() for r in fresh.all()] == [r.to_json() for r in world.service._records.all()]


def nothing_left(world: World) -> None:
    assert world.lio.storage_objects == {} and world.lio.targets == {}
    assert list((world.tmp / "pool").iterdir()) == []
    assert list((world.tmp / "state" / "volumes").iterdir()) == []
    assert list((world.tmp / "state" / "snapshots").iterdir()) == []
    doc = json.loads((world.tmp / "saveconfig.json").read_text())
    assert doc["storage_objects"] == [] and doc["targets"] == []


def create(world: World) -> str:
    return world.create("pvc-f", 64 * MiB).volume_id  # type: ignore[no-any-return]


def delete(world: World, vid: str) -> None:
    world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))


def unpublish(world: World, vid: str) -> None:
    world.stub.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE))


def expand(world: World, vid: str) -> None:
    world.stub.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB)))


VID = contract.volume_id_for_name("pvc-f")
IQN = contract.target_iqn(VID)
Step = Callable[[World], object]

# point -> (set-up before the failing call, the call, what must hold right after the failure)
CASES: dict[str, tuple[Step, Step, Step]] = {}


def case(*points: str) -> Callable[[tuple[Step, Step, Step]], None]:
    def register(value: tuple[Step, Step, Step]) -> None:
        for point in points:
            CASES[point] = value
    return register  # type: ignore[return-value]


def after_failed_create(world: World) -> None:
    nothing_left(world)  # a failed create undoes itself: the CO never learnt of the volume


case("create.after_record", "create.after_pool", "create.after_lio", "create.after_save")(
    (lambda w: None, create, after_failed_create))


def after_failed_publish(world: World) -> None:
    assert world.lio.initiators(IQN) == []
    assert dict(world.service.get(VID).grants) == {}  # type: ignore[union-attr]


case("publish.after_record", "publish.after_grant", "publish.after_save")(
    (create, lambda w: w.publish(VID), after_failed_publish))


def after_failed_unpublish(world: World) -> None:
    assert world.lio.initiators(IQN) == []  # fenced in LIO before anything else; the retry finishes the rest


case("unpublish.after_revoke", "unpublish.after_save")(
    (lambda w: (create(w), w.publish(VID)), lambda w: unpublish(w, VID), after_failed_unpublish))


def after_failed_delete(world: World) -> None:
    assert world.service.get(VID).state == "deleting"  # type: ignore[union-attr]
    assert world.stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries == []


case("delete.after_record", "delete.after_lio", "delete.after_save", "delete.after_pool")(
    (create, lambda w: delete(w, VID), after_failed_delete))


def after_failed_expand(world: World) -> None:
    record = world.service.get(VID)
    assert record.capacity_bytes == 64 * MiB  # type: ignore[union-attr]
    assert world.lio.storage_objects[VID]["size"] == 64 * MiB  # exported again at its recorded size


case("expand.after_pool", "expand.after_lio", "expand.after_save")(
    (create, lambda w: expand(w, VID), after_failed_expand))

SID = contract.snapshot_id_for_name("snap-f")


def snapshot(world: World) -> None:
    """CreateSnapshot until ready: a fileio copy may answer ready_to_use=false first."""
    request = csi_pb2.CreateSnapshotRequest(name="snap-f", source_volume_id=VID)
    while not world.stub.CreateSnapshot(request).snapshot.ready_to_use:
        pass


def delete_snapshot(world: World) -> None:
    world.stub.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=SID))


def after_failed_snapshot(world: World) -> None:
    # The CO never learnt of the snapshot: no record, no copy, and the volume is the nodes' again.
    assert world.service.get_snapshot(SID) is None
    assert sorted(p.name for p in (world.tmp / "pool").iterdir()) == [f"{VID}.img"]
    world.publish(VID)
    unpublish(world, VID)


case("snapshot.after_record", "snapshot.after_pool")((create, snapshot, after_failed_snapshot))


def after_failed_snapshot_delete(world: World) -> None:
    assert world.service.get_snapshot(SID).state == "deleting"  # type: ignore[union-attr]
    assert world.stub.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries == []


case("delete_snapshot.after_record", "delete_snapshot.after_pool")(
    (lambda w: (create(w), snapshot(w)), delete_snapshot, after_failed_snapshot_delete))

CONTROLLER_POINTS = [p for p in POINTS if p.split(".")[0] in ("create", "delete", "publish", "unpublish", "expand",
                                                              "snapshot", "delete_snapshot")]


def test_every_controller_point_has_a_case() -> None:
    assert sorted(CASES) == sorted(CONTROLLER_POINTS)


@pytest.mark.parametrize("point", CONTROLLER_POINTS)
def test_a_controller_call_failing_at_each_point_converges(world: World, point: str) -> None:
    setup, call, after = CASES[point]
    setup(world)
    arm(f"{point}=raise")
    with pytest.raises(grpc.RpcError) as err:
        call(world)
    assert err.value.code() == grpc.StatusCode.INTERNAL and point in err.value.details()
    after(world)
    memory_matches_disk(world)
    call(world)  # the CO's retry
    memory_matches_disk(world)
    # The reverse path leaves nothing.
    unpublish(world, VID)
    delete_snapshot(world)
    delete(world, VID)
    nothing_left(world)


# The node's points, raised -------------------------------------------------------------------------

def node_world(tmp_path: Path) -> NodeWorld:
    w = NodeWorld(tmp_path)
    (w.sys / "block/dm-0/size").write_text(str(64 * MiB // 512))
    return w


def staging(w: NodeWorld) -> str:
    return f"{w.tmp}/staging"


def pod(w: NodeWorld) -> str:
    return f"{w.tmp}/pods/p1/mount"


def node_publish(w: NodeWorld) -> None:
    w.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=NODE_VID, staging_target_path=staging(w), target_path=pod(w), volume_capability=node_cap()))


def node_unpublish(w: NodeWorld) -> None:
    w.stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=NODE_VID, target_path=pod(w)))


def node_expand(w: NodeWorld) -> None:
    w.stub.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(volume_id=NODE_VID, volume_path=staging(w)))


def mounted(w: NodeWorld, path: str) -> bool:
    return any(line.split()[4] == path for line in w.mountinfo.read_text().splitlines())


def publish_refused(w: NodeWorld) -> None:
    with pytest.raises(grpc.RpcError) as err:
        node_publish(w)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


NodeStep = Callable[[NodeWorld], object]
NODE_CASES: dict[str, tuple[NodeStep, NodeStep, NodeStep]] = {}


def stage_left_nothing(w: NodeWorld) -> None:
    assert left_on_host(w) == []


for point in ("stage.after_state", "stage.after_records", "stage.after_login", "stage.after_device",
              "stage.after_mkfs", "stage.after_mount"):
    NODE_CASES[point] = (lambda w: None, lambda w: w.stage(), stage_left_nothing)
for point in ("unstage.after_umount", "unstage.after_flush", "unstage.after_devices", "unstage.after_logout",
              "unstage.after_records"):
    NODE_CASES[point] = (lambda w: w.stage(), lambda w: w.unstage(), publish_refused)
def publish_left_nothing(w: NodeWorld) -> None:
    assert not mounted(w, pod(w)) and not Path(pod(w)).exists()


def pod_not_mounted(w: NodeWorld) -> None:
    assert not mounted(w, pod(w))


def still_staged(w: NodeWorld) -> None:
    assert mounted(w, staging(w))


for point in ("node_publish.after_mkdir", "node_publish.after_bind"):
    NODE_CASES[point] = (lambda w: w.stage(), node_publish, publish_left_nothing)
NODE_CASES["node_unpublish.after_umount"] = (lambda w: (w.stage(), node_publish(w)), node_unpublish, pod_not_mounted)
for point in ("node_expand.after_rescan", "node_expand.after_resize"):
    NODE_CASES[point] = (lambda w: w.stage(), node_expand, still_staged)

NODE_POINTS = [p for p in POINTS if p not in CONTROLLER_POINTS]


def test_every_node_point_has_a_case() -> None:
    assert sorted(NODE_CASES) == sorted(NODE_POINTS)


@pytest.mark.parametrize("point", NODE_POINTS)
def test_a_node_call_failing_at_each_point_converges(tmp_path: Path, point: str) -> None:
    w = node_world(tmp_path)
    try:
        setup, call, after = NODE_CASES[point]
        setup(w)
        arm(f"{point}=raise")
        with pytest.raises(grpc.RpcError) as err:
            call(w)
        assert err.value.code() == grpc.StatusCode.INTERNAL and point in err.value.details()
        after(w)
        call(w)  # kubelet's retry
        if point.startswith(("stage.", "node_expand.")):
            node_publish(w)
        if not point.startswith("unstage."):
            node_unpublish(w)
            w.unstage()
        assert left_on_host(w) == []
        assert not mounted(w, pod(w)) and not Path(pod(w)).exists()
    finally:
        w.channel.close()
        w.server.stop(0)
