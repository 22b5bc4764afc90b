"""Snapshots and volumes made from a snapshot or a volume, over the real service, pools and
records (LIO and LVM faked; fileio copies are real files)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2
from csi_iscsi.lio import filecopy, service
from tests.unit.test_controller import MiB, World, cap
from tests.unit.test_controller_faults import LvmWorld

CREATE_SNAPSHOT = csi_pb2.CreateSnapshotRequest


def code_of(call: object, *args: object, **kwargs: object) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop()


def pool_file(world: World, item_id: str) -> Path:
    return world.tmp / "pool" / f"{item_id}.img"


def write(world: World, volume_id: str, offset: int, data: bytes) -> None:
    with open(pool_file(world, volume_id), "r+b") as f:
        f.seek(offset)
        f.write(data)


def digest(path: Path, size: int | None = None) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def snapshot(world: World, name: str, source: str) -> csi_pb2.Snapshot:
    return world.stub.CreateSnapshot(CREATE_SNAPSHOT(name=name, source_volume_id=source)).snapshot


def wait_ready(world: World, name: str, source: str) -> csi_pb2.Snapshot:
    deadline = time.monotonic() + 30
    while not (snap := snapshot(world, name, source)).ready_to_use:
        assert time.monotonic() < deadline, "the snapshot never became ready"
    return snap


def create_from(world: World, name: str, size: int = 0, *, snapshot_id: str = "", volume_id: str = "",
                limit: int = 0) -> csi_pb2.Volume:
    source = (csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))
              if snapshot_id else
              csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id)))
    return world.stub.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size, limit_bytes=limit),
        volume_capabilities=[cap()], volume_content_source=source)).volume


def leftovers(world: World) -> list[str]:
    pool = sorted(p.name for p in (world.tmp / "pool").iterdir())
    records = sorted(p.name for p in (world.tmp / "state" / "snapshots").iterdir())
    return pool + records


# fileio --------------------------------------------------------------------------------------------

def test_a_volume_made_from_a_snapshot_holds_the_data_at_snapshot_time(world: World) -> None:
    vid = world.create("pvc-src", 64 * MiB).volume_id
    write(world, vid, 0, b"before" * 1000)
    write(world, vid, 40 * MiB, os.urandom(MiB))
    at_snapshot = digest(pool_file(world, vid))
    snap = wait_ready(world, "snap-1", vid)
    assert snap.snapshot_id == contract.snapshot_id_for_name("snap-1")
    assert snap.size_bytes == 64 * MiB and snap.source_volume_id == vid and snap.creation_time.seconds > 0
    write(world, vid, 0, b"after!" * 1000)
    restored = create_from(world, "pvc-restored", snapshot_id=snap.snapshot_id)
    assert restored.capacity_bytes == 64 * MiB
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert digest(pool_file(world, restored.volume_id)) == at_snapshot
    # Holes stay holes: the copy holds about what the source held, not 64 MiB.
    assert pool_file(world, restored.volume_id).stat().st_blocks * 512 < 8 * MiB
    record = json.loads((world.tmp / "state" / "volumes" / f"{restored.volume_id}.json").read_text())
    assert record["content_source"] == f"snapshot:{snap.snapshot_id}"


def test_a_clone_holds_the_source_volume_and_may_be_larger(world: World) -> None:
    vid = world.create("pvc-src", 64 * MiB).volume_id
    write(world, vid, MiB, b"clone me" * 512)
    clone = create_from(world, "pvc-clone", 128 * MiB, volume_id=vid)
    assert clone.capacity_bytes == 128 * MiB and clone.content_source.volume.volume_id == vid
    assert pool_file(world, clone.volume_id).stat().st_size == 128 * MiB
    assert digest(pool_file(world, clone.volume_id), 64 * MiB) == digest(pool_file(world, vid))


def test_create_snapshot_is_idempotent_and_a_name_names_one_source(world: World) -> None:
    a, b = world.create("pvc-a").volume_id, world.create("pvc-b").volume_id
    first = wait_ready(world, "snap-x", a)
    again = snapshot(world, "snap-x", a)
    assert (again.snapshot_id, again.creation_time) == (first.snapshot_id, first.creation_time)
    assert code_of(world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="snap-x", source_volume_id=b)) == \
        grpc.StatusCode.ALREADY_EXISTS


def test_requests_that_name_nothing_are_refused_with_the_codes_the_spec_names(world: World) -> None:
    vid = world.create("pvc-src", 64 * MiB).volume_id
    assert code_of(world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="s", source_volume_id="csi-" + "0" * 32)) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(world.stub.CreateSnapshot, CREATE_SNAPSHOT(source_volume_id=vid)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="s")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(create_from, world, "v1", snapshot_id="snap-" + "0" * 32) == grpc.StatusCode.NOT_FOUND
    assert code_of(create_from, world, "v2", snapshot_id="not-ours") == grpc.StatusCode.NOT_FOUND
    assert code_of(create_from, world, "v3", volume_id="csi-" + "1" * 32) == grpc.StatusCode.NOT_FOUND
    assert code_of(create_from, world, "v4", 0, volume_id=vid, limit=32 * MiB) == grpc.StatusCode.OUT_OF_RANGE
    world.stub.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="snap-" + "0" * 32))
    assert leftovers(world) == [f"{vid}.img"]


def test_a_published_volume_is_not_copied_where_the_pool_cannot_reflink(world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("csi_iscsi.lio.pools.try_reflink", lambda src, dst: False)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    world.publish(vid)
    assert code_of(world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="snap-live", source_volume_id=vid)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(create_from, world, "pvc-clone", volume_id=vid) == grpc.StatusCode.FAILED_PRECONDITION
    assert leftovers(world) == [f"{vid}.img"]  # no record, no copy, no partial file
    assert len(world.stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries) == 1


def slow_copy(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Copies that wait for the returned event between chunks."""
    go = threading.Event()
    real = filecopy.sparse_copy

    def copy(src: Path, dst: Path, cancel: threading.Event | None = None, label: str = "") -> int:
        while not go.wait(0.05):
            if cancel is not None and cancel.is_set():
                raise filecopy.Cancelled("stopped")
        return real(src, dst, cancel, label)

    monkeypatch.setattr("csi_iscsi.lio.pools.try_reflink", lambda src, dst: False)
    monkeypatch.setattr("csi_iscsi.lio.pools.sparse_copy", copy)
    monkeypatch.setattr(service, "COPY_ANSWER_WAIT", 0.1)
    return go


def test_a_long_copy_answers_not_ready_and_keeps_the_source_from_nodes(world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    go = slow_copy(monkeypatch)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    snap = snapshot(world, "snap-slow", vid)
    assert not snap.ready_to_use
    listed = world.stub.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id=snap.snapshot_id)).entries
    assert [e.snapshot.ready_to_use for e in listed] == [False]
    assert code_of(world.publish, vid) == grpc.StatusCode.ABORTED
    assert code_of(world.stub.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=vid)) == grpc.StatusCode.ABORTED
    assert code_of(create_from, world, "pvc-early", snapshot_id=snap.snapshot_id) == \
        grpc.StatusCode.FAILED_PRECONDITION
    go.set()
    assert wait_ready(world, "snap-slow", vid).ready_to_use
    world.publish(vid)  # the copy is done: the volume is the nodes' again


def test_deleting_a_snapshot_under_copy_stops_the_copy_and_leaves_nothing(world: World,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    slow_copy(monkeypatch)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    snap = snapshot(world, "snap-gone", vid)
    world.stub.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert leftovers(world) == [f"{vid}.img"]
    world.publish(vid)


def test_a_failed_copy_is_reported_and_undone_then_started_again(world: World,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("csi_iscsi.lio.pools.try_reflink", lambda src, dst: False)
    real = filecopy.sparse_copy
    calls = []

    def failing_once(src: Path, dst: Path, cancel: threading.Event | None = None, label: str = "") -> int:
        calls.append(dst)
        if len(calls) == 1:
            dst.write_bytes(b"partial")
            raise OSError(5, "Input/output error")
        return real(src, dst, cancel, label)

    monkeypatch.setattr("csi_iscsi.lio.pools.sparse_copy", failing_once)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    with pytest.raises(grpc.RpcError) as err:
        snapshot(world, "snap-io", vid)
    assert err.value.code() == grpc.StatusCode.INTERNAL and "Input/output error" in (err.value.details() or "")
    # Failed in the call that made it: the CO never learnt of it, so nothing of it is left.
    assert leftovers(world) == [f"{vid}.img"]
    assert wait_ready(world, "snap-io", vid).ready_to_use
    assert len(calls) == 2


def test_a_copy_a_restart_interrupted_is_finished_by_the_retry(world: World) -> None:
    vid = world.create("pvc-src", 64 * MiB).volume_id
    write(world, vid, 0, b"x" * 4096)
    sid = contract.snapshot_id_for_name("snap-crash")
    # What a crash in the middle of the copy leaves: the record, creating, and a partial file.
    (world.tmp / "state" / "snapshots" / f"{sid}.json").write_text(json.dumps({
        "snapshot_id": sid, "name": "snap-crash", "source_volume_id": vid, "pool": "default",
        "size_bytes": 64 * MiB, "created_ns": 1, "state": "creating"}))
    (world.tmp / "pool" / f"{sid}.img.part").write_bytes(b"torn")
    world.stop()
    world.restart()
    assert any("snap-crash" in line for line in world.service.reconcile())
    assert wait_ready(world, "snap-crash", vid).ready_to_use
    assert digest(pool_file(world, sid)) == digest(pool_file(world, vid))
    assert not (world.tmp / "pool" / f"{sid}.img.part").exists()


def test_list_snapshots_pages_and_filters(world: World) -> None:
    a, b = world.create("pvc-a").volume_id, world.create("pvc-b").volume_id
    ids = {wait_ready(world, f"s{i}", a if i % 2 else b).snapshot_id for i in range(5)}
    seen, token = [], ""
    while True:
        page = world.stub.ListSnapshots(csi_pb2.ListSnapshotsRequest(max_entries=2, starting_token=token))
        assert len(page.entries) <= 2
        seen += [e.snapshot.snapshot_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    of_a = world.stub.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=a)).entries
    assert len(of_a) == 2 and {e.snapshot.source_volume_id for e in of_a} == {a}
    assert not world.stub.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id="snap-" + "f" * 32)).entries
    assert code_of(world.stub.ListSnapshots, csi_pb2.ListSnapshotsRequest(starting_token="bogus")) == \
        grpc.StatusCode.ABORTED


def test_snapshots_and_volumes_are_independent_in_every_delete_order(world: World) -> None:
    vid = world.create("pvc-src", 64 * MiB).volume_id
    write(world, vid, 0, b"data" * 100)
    snap = wait_ready(world, "snap-1", vid)
    restored = create_from(world, "pvc-r", snapshot_id=snap.snapshot_id).volume_id
    world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    restored2 = create_from(world, "pvc-r2", snapshot_id=snap.snapshot_id).volume_id
    world.stub.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert digest(pool_file(world, restored)) == digest(pool_file(world, restored2))
    for v in (restored, restored2):
        world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=v))
    assert leftovers(world) == []
    assert not world.lio.storage_objects and not world.lio.targets


# lvm-thin (LvmWorld: the same fake volume group as the controller's fault tests) --------------------

@pytest.fixture
def lvm_world(tmp_path: Path) -> Iterator[LvmWorld]:
    w = LvmWorld(tmp_path)
    yield w
    w.stop()


def test_lvm_snapshots_are_inactive_thin_snapshots_and_restores_are_active(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create("pvc-src", 64 * MiB).volume_id
    lvm_world.publish(vid)  # a thin snapshot is consistent in use
    snap = snapshot(lvm_world, "snap-1", vid)
    assert snap.ready_to_use and lvm_world.lvm.lvs[snap.snapshot_id] == 64 * MiB
    assert snap.snapshot_id in lvm_world.lvm.inactive
    restored = create_from(lvm_world, "pvc-r", 128 * MiB, snapshot_id=snap.snapshot_id).volume_id
    assert lvm_world.lvm.lvs[restored] == 128 * MiB and restored not in lvm_world.lvm.inactive
    assert lvm_world.lio.storage_objects[restored]  # exported over its LV


def test_lvm_refuses_snapshots_and_clones_past_the_usage_limit(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create("pvc-src", 64 * MiB).volume_id
    lvm_world.lvm.usage = (91.0, 10.0)
    assert code_of(lvm_world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="s", source_volume_id=vid)) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(create_from, lvm_world, "pvc-c", volume_id=vid) == grpc.StatusCode.RESOURCE_EXHAUSTED
    lvm_world.lvm.usage = (10.0, 95.0)
    assert code_of(create_from, lvm_world, "pvc-c", volume_id=vid) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert set(lvm_world.lvm.lvs) == {"thin", vid}
    assert not list((lvm_world.tmp / "state" / "snapshots").iterdir())


def test_a_failed_lvm_snapshot_leaves_no_record(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create("pvc-src", 64 * MiB).volume_id
    lvm_world.runner.on(["lvcreate"], returncode=5)
    assert code_of(lvm_world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="s", source_volume_id=vid)) != \
        grpc.StatusCode.OK
    assert not list((lvm_world.tmp / "state" / "snapshots").iterdir())


def test_only_a_volume_made_from_a_source_records_one_so_older_releases_read_the_rest(world: World) -> None:
    vid = world.create("pvc-old").volume_id
    assert "content_source" not in json.loads((world.tmp / "state" / "volumes" / f"{vid}.json").read_text())
    clone = create_from(world, "pvc-clone", volume_id=vid).volume_id
    assert json.loads((world.tmp / "state" / "volumes" / f"{clone}.json").read_text())["content_source"] == \
        f"volume:{vid}"
    world.stop()
    world.restart()
    assert world.service.get(vid) is not None and world.service.get(vid).content_source == ""  # type: ignore[union-attr]


# Review findings ------------------------------------------------------------------------------------

def test_after_a_restart_a_half_copied_snapshot_still_keeps_nodes_off_its_source(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is the record on disk: a restart must not let a node write the volume and a later
    copy pass newer data off under the creation time the CO was first given."""
    go = slow_copy(monkeypatch)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    first = snapshot(world, "snap-r", vid)
    assert not first.ready_to_use
    world.stop()
    world.restart()  # forgets the running copy; the record stays creating
    world.service.reconcile()  # starts the copy again
    assert code_of(world.publish, vid) == grpc.StatusCode.ABORTED
    assert code_of(world.stub.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB))) == grpc.StatusCode.ABORTED
    go.set()
    done = wait_ready(world, "snap-r", vid)
    assert done.creation_time == first.creation_time
    world.publish(vid)


def test_a_copy_failing_after_the_first_answer_keeps_the_guard_until_made_or_deleted(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    go = slow_copy(monkeypatch)
    real = filecopy.sparse_copy

    def broken(src: Path, dst: Path, cancel: threading.Event | None = None, label: str = "") -> int:
        go.wait()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("csi_iscsi.lio.pools.sparse_copy", broken)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    first = snapshot(world, "snap-broken", vid)
    assert not first.ready_to_use  # the CO now knows the snapshot
    go.set()
    with pytest.raises(grpc.RpcError) as err:
        while True:
            snapshot(world, "snap-broken", vid)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert world.service.get_snapshot(first.snapshot_id) is not None  # kept: its id is the CO's
    with pytest.raises(grpc.RpcError) as err:
        world.publish(vid)
    assert err.value.code() == grpc.StatusCode.ABORTED and "not made yet" in (err.value.details() or "")
    world.stub.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=first.snapshot_id))
    world.publish(vid)
    assert leftovers(world) == [f"{vid}.img"]
    monkeypatch.setattr("csi_iscsi.lio.pools.sparse_copy", real)


def test_a_snapshot_counts_its_size_against_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = LvmWorld(tmp_path)
    try:
        world.lvm.lvs["thin"] = 256 * MiB
        vid = world.create("pvc-src", 160 * MiB).volume_id
        assert code_of(world.stub.CreateSnapshot, CREATE_SNAPSHOT(name="s", source_volume_id=vid)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
        vid = world.create("pvc-small", 96 * MiB).volume_id
        assert snapshot(world, "s2", vid).ready_to_use
        # 96 for the volume and 96 for its snapshot: 64 MiB are left, and a clone takes 96.
        assert world.stub.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity == 64 * MiB
        assert code_of(create_from, world, "pvc-c", volume_id=vid) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        world.stop()


def test_a_clone_that_must_copy_runs_in_the_background_and_answers_aborted_meanwhile(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    go = slow_copy(monkeypatch)
    vid = world.create("pvc-src", 64 * MiB).volume_id
    write(world, vid, 0, b"golden" * 100)
    assert code_of(create_from, world, "pvc-clone", volume_id=vid) == grpc.StatusCode.ABORTED
    assert code_of(world.publish, vid) == grpc.StatusCode.ABORTED  # the copy reads it now
    go.set()
    deadline = time.monotonic() + 30
    while code_of(create_from, world, "pvc-clone", volume_id=vid) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline
    clone = create_from(world, "pvc-clone", volume_id=vid).volume_id
    assert digest(pool_file(world, clone)) == digest(pool_file(world, vid))
    world.publish(vid)


def test_a_retried_create_from_a_source_deleted_since_is_ok(world: World) -> None:
    vid = world.create("pvc-src", 64 * MiB).volume_id
    snap = wait_ready(world, "snap-1", vid)
    made = create_from(world, "pvc-r", snapshot_id=snap.snapshot_id)
    world.stub.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    again = create_from(world, "pvc-r", snapshot_id=snap.snapshot_id)
    assert again.volume_id == made.volume_id and again.capacity_bytes == made.capacity_bytes


def test_a_filesystems_own_size_is_read_from_its_superblock(tmp_path: Path) -> None:
    """What NodeStage compares with the device to grow a restored filesystem: real mkfs output."""
    from csi_iscsi.host.filesystem import filesystem_bytes

    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    import subprocess

    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    with open(image, "r+b") as f:
        assert filesystem_bytes(f.read(4096), "ext4") == 64 * MiB
        f.truncate(128 * MiB)  # the device grew (a larger restore); the filesystem did not
        f.seek(0)
        assert filesystem_bytes(f.read(4096), "ext4") == 64 * MiB
        f.seek(0)
        assert filesystem_bytes(f.read(4096), "xfs") is None  # not the filesystem named
    assert filesystem_bytes(b"\0" * 4096, "ext4") is None


def test_a_restored_filesystem_is_grown_only_where_it_may_be_and_a_refusal_still_stages() -> None:
    """Review findings: a read-only mount is never grown (the grow would fail every retry); a grow
    the filesystem refuses stages the volume at its size; one that timed out fails the stage."""
    from csi_iscsi.base.runner import CommandFailed, CommandTimedOut
    from csi_iscsi.host.node_volumes import NodeVolumes

    calls: list[str] = []

    class Fs:
        outcome: BaseException | None = None

        def grow_to_device(self, device: str, fstype: str, mountpoint: str) -> bool:
            calls.append(device)
            if self.outcome is not None:
                raise self.outcome
            return True

    volumes = NodeVolumes.__new__(NodeVolumes)
    fs = Fs()
    volumes._fs = fs  # type: ignore[assignment]
    volumes._grow_restored("csi-x", "/dev/dm-0", "ext4", "/stage", ["ro"])
    assert calls == []
    fs.outcome = CommandFailed(("resize2fs", "/dev/dm-0"), 1, "errors in the filesystem", ())
    volumes._grow_restored("csi-x", "/dev/dm-0", "ext4", "/stage", [])  # logged, not raised
    fs.outcome = CommandTimedOut(("resize2fs", "/dev/dm-0"), 600.0, ())
    with pytest.raises(Exception, match="timed out"):
        volumes._grow_restored("csi-x", "/dev/dm-0", "ext4", "/stage", [])


def test_a_copy_in_progress_counts_what_it_has_written(tmp_path: Path) -> None:
    from csi_iscsi.lio.pools import FileioPool

    pool = FileioPool("p", tmp_path, overprovision=1.0, reserve=0)
    (tmp_path / "snap-a.img.part").write_bytes(os.urandom(MiB))
    assert pool._allocated("snap-a") >= MiB
