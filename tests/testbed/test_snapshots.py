"""Snapshots and clones on real pools: LVM thin snapshots, and fileio copies on ext4 (a sparse
copy) and on XFS with reflink=1 (a reflink), driven over the controller's socket."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2

from .conftest import scrub_iscsi_and_lio
from .plugins import MiB, Plugin, controller_args, mount_cap, running

NODE = "testbed/iqn.2026-11.io.csi-iscsi.test:snapshots"
STATE = Path("/var/lib/csi-iscsi-test/snapshots")
RECORDS = STATE / "controller"
SAVEFILE = Path("/var/tmp/csi-iscsi-snapshots-save.json")


def sha(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 4 * MiB))
            assert chunk, f"{path} ended {left} bytes early"
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


class Pool:
    def __init__(self, spec: str, name: str, vg: str = "", directory: Path | None = None) -> None:
        self.spec, self.name, self.vg, self.directory = spec, name, vg, directory

    def backing(self, item_id: str) -> str:
        return f"/dev/{self.vg}/{item_id}" if self.vg else str(self.directory / f"{item_id}.img")

    def items(self) -> list[str]:
        if self.vg:
            out = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", self.vg], capture_output=True,
                                 text=True, check=True).stdout.split()
            return sorted(n for n in out if n != "thin")
        assert self.directory is not None
        return sorted(p.name for p in self.directory.iterdir() if p.name != "lost+found")


def nothing_left(pool: Pool) -> None:
    assert pool.items() == [], pool.items()
    for sub in ("volumes", "snapshots"):
        assert (RECORDS / sub).is_dir() and not list((RECORDS / sub).glob("*.json")), sub
    from rtslib_fb import RTSRoot

    root = RTSRoot()
    prefix = contract.DEFAULT_TARGET_IQN_PREFIX + ":"
    assert not [t.wwn for t in root.targets if t.wwn.startswith(prefix)]
    assert not [so.name for so in root.storage_objects if so.name.startswith("csi-")]
    saved = json.loads(SAVEFILE.read_text()) if SAVEFILE.exists() else {}
    assert not [so for so in saved.get("storage_objects", []) if so.get("name", "").startswith("csi-")]
    assert not [t for t in saved.get("targets", []) if t.get("wwn", "").startswith(prefix)]


@pytest.fixture
def xfs_pool() -> Iterator[Path]:
    image, mnt = Path("/var/tmp/csi-iscsi-xfs.img"), Path("/var/tmp/csi-iscsi-xfs")
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        scrub_iscsi_and_lio(pool_dirs=(mnt,))
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)


@pytest.fixture
def clean() -> Iterator[None]:
    subprocess.run(["rm", "-rf", str(STATE)], check=False)
    yield
    subprocess.run(["rm", "-rf", str(STATE)], check=False)
    SAVEFILE.unlink(missing_ok=True)


@pytest.fixture(params=["lvm-thin", "fileio-ext4", "fileio-xfs-reflink"])
def pool(request: pytest.FixtureRequest, clean: None, tmp_path: Path) -> Iterator[Pool]:
    if request.param == "lvm-thin":
        vg = request.getfixturevalue("thin_vg")
        yield Pool(f"name=p,type=lvm-thin,vg={vg},thinpool=thin", request.param, vg=vg)
        return
    if request.param == "fileio-ext4":
        directory = Path("/var/tmp/csi-iscsi-snap-pool")
        subprocess.run(["rm", "-rf", str(directory)], check=False)
        directory.mkdir(parents=True)
        try:
            yield Pool(f"name=p,type=fileio,path={directory}", request.param, directory=directory)
        finally:
            scrub_iscsi_and_lio(pool_dirs=(directory,))
            subprocess.run(["rm", "-rf", str(directory)], check=False)
        return
    directory = request.getfixturevalue("xfs_pool")
    yield Pool(f"name=p,type=fileio,path={directory}", request.param, directory=directory)


def controller(pool: Pool, tmp_path: Path) -> Iterator[Plugin]:
    return running(controller_args(STATE, [pool.spec], SAVEFILE), tmp_path / "c.sock", tmp_path / "c.log")


def create(plugin: Plugin, name: str, size: int = 0, source: csi_pb2.VolumeContentSource | None = None) -> str:
    return plugin.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capabilities=[mount_cap()],
        parameters={"pool": "p"}, volume_content_source=source)).volume.volume_id


def snapshot(plugin: Plugin, name: str, source: str, timeout: float = 300) -> csi_pb2.Snapshot:
    deadline = time.monotonic() + timeout
    while True:
        request = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=source)
        snap = plugin.controller.CreateSnapshot(request).snapshot
        if snap.ready_to_use:
            return snap
        assert time.monotonic() < deadline, f"snapshot {name} not ready after {timeout} s"


def from_snapshot(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


def from_volume(volume_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))


def test_restore_holds_the_data_at_snapshot_time_and_every_delete_order_leaves_nothing(pool: Pool,
                                                                                       tmp_path: Path) -> None:
    size = 64 * MiB
    first, second = os.urandom(8 * MiB), os.urandom(8 * MiB)
    with controller(pool, tmp_path) as plugin:
        vid = create(plugin, "pvc-src", size)
        write(pool.backing(vid), 4 * MiB, first)
        at_snapshot = sha(pool.backing(vid), size)
        start = time.monotonic()
        snap = snapshot(plugin, "snap-1", vid)
        took = time.monotonic() - start
        write(pool.backing(vid), 4 * MiB, second)
        now = sha(pool.backing(vid), size)
        assert now != at_snapshot
        restored = create(plugin, "pvc-restored", 0, from_snapshot(snap.snapshot_id))
        bigger = create(plugin, "pvc-restored-big", 2 * size, from_snapshot(snap.snapshot_id))
        clone = create(plugin, "pvc-clone", 0, from_volume(vid))
        print(f"{pool.name}: snapshot of {size >> 20} MiB ready in {took:.2f} s")
        assert sha(pool.backing(restored), size) == at_snapshot
        assert sha(pool.backing(bigger), size) == at_snapshot
        assert sha(pool.backing(clone), size) == now
        assert os.path.getsize(pool.backing(bigger)) >= 2 * size or pool.vg
        # Every order the docs allow: the source first, then a restore, then the snapshot, then the rest.
        delete = plugin.controller.DeleteVolume
        delete(csi_pb2.DeleteVolumeRequest(volume_id=vid))
        assert sha(pool.backing(restored), size) == at_snapshot
        again = create(plugin, "pvc-restored-2", 0, from_snapshot(snap.snapshot_id))
        assert sha(pool.backing(again), size) == at_snapshot
        delete(csi_pb2.DeleteVolumeRequest(volume_id=restored))
        plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        assert sha(pool.backing(again), size) == at_snapshot
        for v in (bigger, clone, again):
            delete(csi_pb2.DeleteVolumeRequest(volume_id=v))
    nothing_left(pool)


def test_a_published_volume_is_snapshotted_only_where_it_is_consistent(pool: Pool, tmp_path: Path) -> None:
    with controller(pool, tmp_path) as plugin:
        vid = create(plugin, "pvc-live", 64 * MiB)
        plugin.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=NODE, volume_capability=mount_cap()))
        request = csi_pb2.CreateSnapshotRequest(name="snap-live", source_volume_id=vid)
        if pool.name == "fileio-ext4":
            with pytest.raises(grpc.RpcError) as err:
                plugin.controller.CreateSnapshot(request)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
            assert "reflink" in (err.value.details() or "")
        else:  # a thin snapshot, or a reflink: atomic against LIO's writes
            snap = plugin.controller.CreateSnapshot(request).snapshot
            assert snap.ready_to_use
            plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        plugin.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=vid, node_id=NODE))
        plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    nothing_left(pool)


def test_a_controller_killed_in_the_middle_of_a_copy_converges_on_retry(clean: None, tmp_path: Path) -> None:
    directory = Path("/var/tmp/csi-iscsi-snap-pool")
    subprocess.run(["rm", "-rf", str(directory)], check=False)
    directory.mkdir(parents=True)
    pool = Pool(f"name=p,type=fileio,path={directory}", "fileio-ext4", directory=directory)
    size = 1024 * MiB
    try:
        with controller(pool, tmp_path) as plugin:
            vid = create(plugin, "pvc-big", size)
            subprocess.run(["dd", "if=/dev/urandom", f"of={pool.backing(vid)}", "bs=4M", "count=192",
                            "conv=notrunc,fsync", "status=none"], check=True)
            want = sha(pool.backing(vid), size)
            sid = contract.snapshot_id_for_name("snap-big")
            partial = directory / f"{sid}.img.part"
            answer = plugin.controller.CreateSnapshot.future(
                csi_pb2.CreateSnapshotRequest(name="snap-big", source_volume_id=vid))
            deadline = time.monotonic() + 60
            # Killed in the middle of the copy: some of the data copied, not all of it.
            while not partial.exists() or partial.stat().st_blocks * 512 < 16 * MiB:
                assert time.monotonic() < deadline, "the copy never got going"
                time.sleep(0.002)
            os.kill(plugin.proc.pid, signal.SIGKILL)
            plugin.killed_by_test = True
            with pytest.raises(grpc.RpcError):
                answer.result(timeout=60)
            copied = partial.stat().st_blocks * 512
            record = json.loads((RECORDS / "snapshots" / f"{sid}.json").read_text())
            print(f"killed with {copied >> 20} MiB of 768 copied; record {record['state']}")
            assert record["state"] == "creating" and not (directory / f"{sid}.img").exists()
            assert copied < 768 * MiB
        with controller(pool, tmp_path) as plugin:
            # Until the copy the restart resumed is complete, no node may write the source.
            with pytest.raises(grpc.RpcError) as err:
                plugin.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                    volume_id=vid, node_id=NODE, volume_capability=mount_cap()))
            assert err.value.code() == grpc.StatusCode.ABORTED, err.value
            start = time.monotonic()
            snap = snapshot(plugin, "snap-big", vid)
            print(f"after the restart the retried copy was ready in {time.monotonic() - start:.1f} s")
            assert not partial.exists()
            assert sha(pool.backing(snap.snapshot_id), size) == want
            plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
            plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
        nothing_left(pool)
    finally:
        scrub_iscsi_and_lio(pool_dirs=(directory,))
        subprocess.run(["rm", "-rf", str(directory)], check=False)
