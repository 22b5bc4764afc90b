"""The controller under faults, with LIO and LVM faked: each test names the finding of issue 10 it
covers, and sets up the state the defect needs through the same seams the real code uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2
from csi_iscsi.lio.objects import Lio
from csi_iscsi.lio.pools import FileioPool, LvmThinPool, Pool
from tests.fakes import FakeLvm, FakeRunner
from tests.unit.test_controller import NODE, NODE2, MiB, Mode, World, cap, code_of

GiB = 1024 * MiB
IQN_A = "iqn.1993-08.org.debian:01:aaa"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop()


def unpublish(world: World, vid: str, node: str) -> None:
    world.stub.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node))


def expand(world: World, vid: str, size: int) -> csi_pb2.ControllerExpandVolumeResponse:
    return world.stub.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=size)))


def on_disk(world: World, vid: str) -> dict[str, Any]:
    return json.loads((world.tmp / "state" / "volumes" / f"{vid}.json").read_text())  # type: ignore[no-any-return]


def saved_so(world: World, vid: str) -> dict[str, Any] | None:
    doc = json.loads((world.tmp / "saveconfig.json").read_text())
    return next((so for so in doc["storage_objects"] if so.get("name") == vid), None)


# Finding 4: fencing acts on LIO, not on the record -------------------------------------------------

def test_unpublish_revokes_in_lio_even_when_no_grant_was_recorded(world: World) -> None:
    vid = world.create().volume_id
    # An ACL no record holds: made by hand, or by an older version whose publish died between its
    # grant and its record write.
    world.lio.grant(contract.target_iqn(vid), IQN_A)
    unpublish(world, vid, NODE)
    assert world.lio.initiators(contract.target_iqn(vid)) == []
    assert IQN_A not in json.dumps(json.loads((world.tmp / "saveconfig.json").read_text()))


def test_unpublish_matches_the_grant_by_node_name_after_the_node_iqn_changed(world: World) -> None:
    vid = world.create().volume_id
    world.publish(vid, "worker-1/iqn.1993-08.org.debian:01:before-reinstall")
    unpublish(world, vid, "worker-1/iqn.1993-08.org.debian:01:after-reinstall")
    assert world.lio.initiators(contract.target_iqn(vid)) == []
    assert on_disk(world, vid)["grants"] == {}


def test_reconcile_revokes_acls_that_no_record_holds(world: World) -> None:
    vid = world.create().volume_id
    world.publish(vid)
    world.lio.grant(contract.target_iqn(vid), "iqn.2000-01.example:intruder")
    drift = world.service.reconcile()
    assert any("intruder" in line for line in drift)
    assert world.lio.initiators(contract.target_iqn(vid)) == [IQN_A]
    assert "intruder" not in (world.tmp / "saveconfig.json").read_text()


# Finding 5: memory never runs ahead of disk -------------------------------------------------------

def test_a_failed_expand_is_redone_by_the_retry_not_answered_from_memory(world: World) -> None:
    vid = world.create(size=64 * MiB).volume_id
    world.lio.fail_in["ensure_fileio"] = 1  # the object over the grown file cannot be made this time
    assert code_of(expand, world, vid, 128 * MiB) == grpc.StatusCode.INTERNAL
    assert on_disk(world, vid)["capacity_bytes"] == 64 * MiB
    reply = expand(world, vid, 128 * MiB)
    assert reply.capacity_bytes == 128 * MiB
    assert world.lio.storage_objects[vid]["size"] == 128 * MiB
    assert saved_so(world, vid)["size"] == 128 * MiB  # type: ignore[index]
    assert on_disk(world, vid)["capacity_bytes"] == 128 * MiB


def test_a_create_whose_last_record_write_failed_is_not_ready_in_memory(world: World,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import csi_iscsi.base.atomic as atomic

    real = atomic.write_json_atomic
    writes: list[Path] = []

    def flaky(path: Path, value: Any, mode: int = 0o600) -> None:
        writes.append(path)
        if path.name.startswith("csi-") and len([p for p in writes if p == path]) == 2:
            raise OSError(28, "No space left on device")
        real(path, value, mode)

    monkeypatch.setattr("csi_iscsi.lio.records.write_json_atomic", flaky)
    assert code_of(world.create, "pvc-flaky") == grpc.StatusCode.INTERNAL
    vid = contract.volume_id_for_name("pvc-flaky")
    record = world.service.get(vid)
    path = world.tmp / "state" / "volumes" / f"{vid}.json"
    assert (record is None and not path.exists()) or (record.state == on_disk(world, vid)["state"])
    world.create("pvc-flaky")
    assert on_disk(world, vid)["state"] == "ready"


# Finding 8: the requested access mode must be one the volume was made for --------------------------

def test_publish_refuses_an_access_mode_the_volume_was_not_created_for(world: World) -> None:
    vid = world.stub.CreateVolume(csi_pb2.CreateVolumeRequest(
        name="pvc-rwo-block", volume_capabilities=[cap(Mode.SINGLE_NODE_WRITER, block=True)])).volume.volume_id
    req = csi_pb2.ControllerPublishVolumeRequest(volume_id=vid, node_id=NODE,
                                                 volume_capability=cap(Mode.MULTI_NODE_READER_ONLY, block=True))
    assert code_of(world.stub.ControllerPublishVolume, req) == grpc.StatusCode.INVALID_ARGUMENT
    assert world.lio.initiators(contract.target_iqn(vid)) == []


# Finding 9: fileio capacity is what the filesystem really has ----------------------------------------

def fake_fs(monkeypatch: pytest.MonkeyPatch, total: int, avail: int) -> None:
    block = 4096

    def statvfs(path: object) -> SimpleNamespace:
        return SimpleNamespace(f_frsize=block, f_bsize=block, f_blocks=total // block, f_bavail=avail // block,
                               f_bfree=avail // block)

    monkeypatch.setattr("csi_iscsi.lio.pools.os.statvfs", statvfs)


def test_fileio_counts_free_space_and_what_sparse_volumes_may_still_claim(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake_fs(monkeypatch, total=10 * GiB, avail=GiB)
    world = World(tmp_path)
    try:
        world.service._pools["default"].overprovision = 1.0  # type: ignore[attr-defined]
        assert code_of(world.create, "too-big", 2 * GiB) == grpc.StatusCode.RESOURCE_EXHAUSTED
        world.create("first", 400 * MiB)
        # The first file is still all holes: its 400 MiB are spoken for, whatever the filesystem says.
        assert code_of(world.create, "second", 400 * MiB) == grpc.StatusCode.RESOURCE_EXHAUSTED
        available = world.stub.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity
        assert 0 < available < GiB - 400 * MiB
    finally:
        world.stop()


def test_fileio_preallocates_when_the_pool_asks(tmp_path: Path) -> None:
    pool = FileioPool("p", tmp_path, preallocate=True)  # type: ignore[call-arg]
    backing = pool.allocate("csi-" + "1" * 32, 8 * MiB)
    assert Path(backing.path).stat().st_blocks * 512 >= 8 * MiB


# Findings 10 and 11: LVM's state decides, never its exit code --------------------------------------

class LvmWorld(World):
    def __init__(self, tmp: Path) -> None:
        self.lvm = FakeLvm()
        self.runner = FakeRunner(responders=[self.lvm.respond])
        super().__init__(tmp)

    def pools(self) -> dict[str, Pool]:
        return {"thin": LvmThinPool("thin", self.runner, "vg0", "thin")}


@pytest.fixture
def lvm_world(tmp_path: Path) -> Iterator[LvmWorld]:
    w = LvmWorld(tmp_path)
    yield w
    w.stop()


def test_delete_keeps_the_record_when_lvm_cannot_say_whether_the_lv_exists(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create("pvc-lv").volume_id
    lvm_world.lvm.broken.add("lvs")  # LVM's generic failure, exit 5: a locking error, a missing PV...
    assert code_of(lvm_world.stub.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=vid)) != grpc.StatusCode.OK
    assert vid in lvm_world.lvm.lvs
    assert (lvm_world.tmp / "state" / "volumes" / f"{vid}.json").exists()
    lvm_world.lvm.broken.clear()
    lvm_world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    assert vid not in lvm_world.lvm.lvs


def test_a_failed_lvextend_is_not_recorded_as_grown(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create("pvc-grow", 64 * MiB).volume_id
    lvm_world.lvm.extend_fails = True
    assert code_of(expand, lvm_world, vid, 128 * MiB) != grpc.StatusCode.OK
    assert lvm_world.lvm.lvs[vid] == 64 * MiB
    assert on_disk(lvm_world, vid)["capacity_bytes"] == 64 * MiB
    lvm_world.lvm.extend_fails = False
    assert expand(lvm_world, vid, 128 * MiB).capacity_bytes == 128 * MiB
    assert lvm_world.lvm.lvs[vid] == 128 * MiB


def test_an_online_grown_block_volume_asks_the_node_to_expand(lvm_world: LvmWorld) -> None:
    vid = lvm_world.stub.CreateVolume(csi_pb2.CreateVolumeRequest(
        name="pvc-thin-block", capacity_range=csi_pb2.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[cap(block=True)])).volume.volume_id
    lvm_world.stub.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=vid, node_id=NODE, volume_capability=cap(block=True)))
    assert expand(lvm_world, vid, 128 * MiB).node_expansion_required


# Finding 12: one bad volume does not stop the controller -------------------------------------------

def test_reconcile_goes_on_past_a_volume_it_cannot_restore(world: World) -> None:
    a, b = sorted([world.create("pvc-a").volume_id, world.create("pvc-b").volume_id])
    for vid in (a, b):
        world.lio.targets.pop(contract.target_iqn(vid))
    world.lio.fail_in["restore"] = 1  # the first volume's restore fails
    drift = world.service.reconcile()
    assert any(a in line for line in drift)
    assert contract.target_iqn(b) in world.lio.targets


# Finding 15: initiator claims follow the grants ----------------------------------------------------

def test_a_publish_that_failed_does_not_hold_the_initiator_forever(world: World) -> None:
    vid = world.create("pvc-a").volume_id
    world.lio.fail_in["grant"] = 1
    assert code_of(world.publish, vid, "old-name/iqn.2000-01.example:rebuilt") == grpc.StatusCode.INTERNAL
    world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    other = world.create("pvc-b").volume_id
    # The node was rebuilt under a new name with the same IQN: nothing holds that IQN any more.
    world.publish(other, "new-name/iqn.2000-01.example:rebuilt")


# Finding 16: an HBA index is always found --------------------------------------------------------

def test_a_free_hba_index_is_found_when_the_derived_window_is_full(tmp_path: Path) -> None:
    core = tmp_path / "core"
    taken = 2000  # after a target reboot rtslib numbers the HBAs 0..N-1
    for i in range(taken):
        (core / f"fileio_{i}").mkdir(parents=True)
    lio = Lio.__new__(Lio)
    lio._core = core  # type: ignore[attr-defined]
    name = next(n for n in (f"csi-{i:032x}" for i in range(100000)) if lio._probe("fileio", n)[-1] < taken)
    index = lio._free_index("fileio", name)
    assert not (core / f"fileio_{index}").exists()


# Finding 17 and CHAP values LIO would misread ------------------------------------------------------

def test_a_huge_volume_id_is_not_found_not_resource_exhausted(world: World) -> None:
    huge = "v" * 10000
    req = csi_pb2.ControllerPublishVolumeRequest(volume_id=huge, node_id=NODE, volume_capability=cap())
    with pytest.raises(grpc.RpcError) as err:
        world.stub.ControllerPublishVolume(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(err.value.details()) < 1024


@pytest.mark.parametrize("call", ["create_name", "create_param", "publish_node", "validate", "expand", "list"])
def test_no_answer_echoes_a_request_field_whole(world: World, call: str) -> None:
    huge = "x" * 20000
    vid = world.create().volume_id
    stub = world.stub
    calls = {
        "create_name": lambda: stub.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=huge, volume_capabilities=[cap()], parameters={"pool": huge})),
        "create_param": lambda: stub.CreateVolume(csi_pb2.CreateVolumeRequest(
            name="p", volume_capabilities=[cap()], parameters={huge: "1"})),
        "publish_node": lambda: stub.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=huge, volume_capability=cap())),
        "validate": lambda: stub.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=huge, volume_capabilities=[cap()])),
        "expand": lambda: stub.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=huge, capacity_range=csi_pb2.CapacityRange(required_bytes=MiB))),
        "list": lambda: stub.ListVolumes(csi_pb2.ListVolumesRequest(starting_token=huge)),
    }
    with pytest.raises(grpc.RpcError) as err:
        calls[call]()
    assert err.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(err.value.details()) < 1024


def test_chap_values_lio_reads_as_unset_are_refused(world: World) -> None:
    vid = world.create(authentication="chap").volume_id
    for secrets in ({"chapUser": "NULL", "chapPassword": "pw-123456"},
                    {"chapUser": "u", "chapPassword": "NULLified-password"}):
        assert code_of(world.publish, vid, NODE, False, secrets) == grpc.StatusCode.INVALID_ARGUMENT
    assert world.lio.initiators(contract.target_iqn(vid)) == []


# Initiator names in another case (review of issue 10): LIO keeps them lowercased --------------------

def test_an_uppercase_iqn_is_one_initiator_for_fencing_claims_and_the_saved_config(world: World) -> None:
    vid = world.create("pvc-case").volume_id
    world.publish(vid, "worker-1/iqn.2000-01.Example:Node-A")
    assert world.service.reconcile() == []  # the live ACL is the recorded grant: nothing revoked
    assert world.lio.initiators(contract.target_iqn(vid)) == ["iqn.2000-01.example:node-a"]
    other = world.create("pvc-case-2").volume_id
    assert code_of(world.publish, other, "worker-2/iqn.2000-01.example:node-a") == grpc.StatusCode.FAILED_PRECONDITION
    unpublish(world, vid, "worker-1/iqn.2000-01.EXAMPLE:NODE-A")
    assert world.lio.initiators(contract.target_iqn(vid)) == []
    assert "node-a" not in (world.tmp / "saveconfig.json").read_text().lower()
    assert on_disk(world, vid)["grants"] == {}


def test_an_unreadable_record_is_an_error_not_an_unknown_volume(world: World) -> None:
    vid = world.create("pvc-torn").volume_id
    world.stop()
    (world.tmp / "state" / "volumes" / f"{vid}.json").write_text("{torn")
    world.restart()
    assert any("unreadable" in line for line in world.service.reconcile())
    assert code_of(world.stub.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=vid)) == grpc.StatusCode.UNAVAILABLE
    assert vid in world.lio.storage_objects  # still exported, not silently forgotten


def test_reconcile_never_exports_a_volume_whose_data_is_gone(world: World) -> None:
    vid = world.create("pvc-gone").volume_id
    world.lio.storage_objects.pop(vid)
    world.lio.targets.pop(contract.target_iqn(vid))
    (world.tmp / "pool" / f"{vid}.img").unlink()
    drift = world.service.reconcile()
    assert any("missing" in line for line in drift)
    assert vid not in world.lio.storage_objects and not (world.tmp / "pool" / f"{vid}.img").exists()


def test_a_create_with_other_access_modes_is_already_exists(world: World) -> None:
    world.create("pvc-modes")
    req = csi_pb2.CreateVolumeRequest(name="pvc-modes", capacity_range=csi_pb2.CapacityRange(required_bytes=64 * MiB),
                                      volume_capabilities=[cap(Mode.SINGLE_NODE_READER_ONLY)])
    assert code_of(world.stub.CreateVolume, req) == grpc.StatusCode.ALREADY_EXISTS


def test_fileio_pools_on_one_filesystem_count_each_others_claims(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from csi_iscsi.lio.saveconfig import SavedConfig
    from csi_iscsi.lio.service import LioTargetService
    from tests.fakes import FakeLio

    fake_fs(monkeypatch, total=10 * GiB, avail=GiB)
    pools = {name: FileioPool(name, tmp_path / name) for name in ("a", "b")}
    for pool in pools.values():
        pool.directory.mkdir()
    service = LioTargetService(pools, ["10.0.0.1:3260"], tmp_path / "state",  # type: ignore[arg-type]
                               SavedConfig(tmp_path / "save.json"), lio=FakeLio())  # type: ignore[arg-type]
    before = service.available_bytes("b")
    from csi_iscsi.lio.api import VolumeSpec
    service.create(VolumeSpec(contract.volume_id_for_name("x"), "x", "a", 256 * MiB, "mount",
                              ("SINGLE_NODE_WRITER",), {"pool": "a"}, "none"))
    assert service.available_bytes("b") == before - 256 * MiB


def test_listing_volumes_with_a_record_unreadable_is_an_error_not_a_short_list(world: World) -> None:
    vid = world.create("pvc-torn-list").volume_id
    world.stop()
    (world.tmp / "state" / "volumes" / f"{vid}.json").write_text('{"volume_id": 1}')
    world.restart()
    assert code_of(world.stub.ListVolumes, csi_pb2.ListVolumesRequest()) == grpc.StatusCode.UNAVAILABLE


def test_publish_exports_a_volume_start_up_could_not(world: World) -> None:
    vid = world.create("pvc-late-pool").volume_id
    world.lio.targets.pop(contract.target_iqn(vid))
    world.lio.storage_objects.pop(vid)
    world.publish(vid)
    assert contract.target_iqn(vid) in world.lio.targets
    other = world.create("pvc-no-data").volume_id
    world.lio.targets.pop(contract.target_iqn(other))
    (world.tmp / "pool" / f"{other}.img").unlink()
    assert code_of(world.publish, other, NODE2) == grpc.StatusCode.UNAVAILABLE
