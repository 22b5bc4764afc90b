"""The controller servicer over the real service, pools and records, with LIO faked."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.lio.pools import FileioPool, Pool
from csi_iscsi.lio.saveconfig import SavedConfig
from csi_iscsi.lio.service import LioTargetService
from csi_iscsi.server import CsiServer, Services
from csi_iscsi.servicers.controller import ControllerServicer
from csi_iscsi.servicers.identity import IdentityServicer
from tests.fakes import FakeLio

MiB = 1024 * 1024
GiB = 1024 * MiB
NODE = "worker-1/iqn.1993-08.org.debian:01:aaa"
NODE2 = "worker-2/iqn.1993-08.org.debian:01:bbb"
Mode = csi_pb2.VolumeCapability.AccessMode


def cap(mode: int = Mode.SINGLE_NODE_WRITER, block: bool = False) -> csi_pb2.VolumeCapability:
    if block:
        return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                        access_mode=Mode(mode=mode))
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
                                    access_mode=Mode(mode=mode))


class World:
    def __init__(self, tmp: Path, zones: tuple[str, ...] = ("default",)) -> None:
        self.tmp = tmp
        self.zones = zones
        self.lio = FakeLio()
        (tmp / "pool").mkdir(exist_ok=True)
        self.restart()

    def pools(self) -> dict[str, Pool]:
        return {"default": FileioPool("default", self.tmp / "pool", overprovision=1000)}

    def restart(self) -> None:
        self.service = LioTargetService(
            self.pools(), ["10.0.0.1:3260", "10.0.1.1:3260"], self.tmp / "state",
            SavedConfig(self.tmp / "saveconfig.json"), lio=self.lio)  # type: ignore[arg-type]
        self.servicer = ControllerServicer(self.service, self.zones)
        self.server = CsiServer(Services(identity=IdentityServicer(lambda: (True, "")), controller=self.servicer),
                                f"unix://{self.tmp}/c.sock")
        self.server.start()
        self.channel = grpc.insecure_channel(f"unix:{self.tmp}/c.sock")
        self.stub = csi_pb2_grpc.ControllerStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(0)
        self.service.close()

    def create(self, name: str = "pvc-1", size: int = 64 * MiB, limit: int = 0, **params: str) -> csi_pb2.Volume:
        return self.stub.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size, limit_bytes=limit),
            volume_capabilities=[cap()], parameters=params)).volume

    def publish(self, volume_id: str, node: str = NODE, readonly: bool = False,
                secrets: dict[str, str] | None = None) -> dict[str, str]:
        return dict(self.stub.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=node, volume_capability=cap(), readonly=readonly,
            secrets=secrets or {})).publish_context)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop()


def code_of(fn: object, *args: object, **kwargs: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)  # type: ignore[operator]
    return err.value.code()  # type: ignore[no-any-return]


def test_create_returns_what_the_node_needs(world: World) -> None:
    volume = world.create(size=100 * MiB)
    assert contract.is_volume_id(volume.volume_id)
    assert volume.capacity_bytes == 100 * MiB
    ctx = dict(volume.volume_context)
    assert ctx == {"targetIQN": contract.target_iqn(volume.volume_id), "portals": "10.0.0.1:3260,10.0.1.1:3260",
                   "lun": "0", "wwid": contract.wwid(volume.volume_id), "pool": "default"}
    so = world.lio.storage_objects[volume.volume_id]
    assert so["wwn"] == contract.unit_serial(volume.volume_id)
    assert (world.tmp / "pool" / f"{volume.volume_id}.img").stat().st_size == 100 * MiB


def test_create_is_idempotent_and_conflicts_are_already_exists(world: World) -> None:
    a = world.create("pvc-x", 64 * MiB)
    assert world.create("pvc-x", 64 * MiB) == a
    assert code_of(world.create, "pvc-x", 128 * MiB) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(world.create, "pvc-x", 64 * MiB, 0, authentication="chap") == grpc.StatusCode.ALREADY_EXISTS


def test_sizes_are_aligned_and_bounded(world: World) -> None:
    assert world.create("a", 1).capacity_bytes == 4 * MiB
    assert world.create("b", 0).capacity_bytes == GiB
    assert world.create("c", 0, 10 * MiB).capacity_bytes == 8 * MiB
    assert code_of(world.create, "d", 5 * MiB, 6 * MiB) == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(world.create, "e", 10 * MiB, 5 * MiB) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("params", [{"color": "blue"}, {"pool": "nope"}, {"authentication": "kerberos"}])
def test_bad_parameters_are_invalid_argument(world: World, params: dict[str, str]) -> None:
    assert code_of(world.create, "p", MiB, 0, **params) == grpc.StatusCode.INVALID_ARGUMENT


def test_kubernetes_parameters_are_ignored(world: World) -> None:
    world.create("k", MiB, 0, **{"csi.storage.k8s.io/fstype": "xfs", "csi.storage.k8s.io/pvc/name": "x"})


def test_not_enough_space_is_resource_exhausted(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        world.service._pools["default"].overprovision = 0.000001  # type: ignore[attr-defined]
        assert code_of(world.create, "big", 1024 * GiB) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert world.service.get(contract.volume_id_for_name("big")) is None
    finally:
        world.stop()


def test_unsupported_capabilities(world: World) -> None:
    for c in (cap(Mode.MULTI_NODE_MULTI_WRITER), cap(Mode.MULTI_NODE_READER_ONLY),
              cap(Mode.MULTI_NODE_SINGLE_WRITER, block=True)):
        req = csi_pb2.CreateVolumeRequest(name="m", volume_capabilities=[c])
        assert code_of(world.stub.CreateVolume, req) == grpc.StatusCode.INVALID_ARGUMENT
    req = csi_pb2.CreateVolumeRequest(name="m", volume_capabilities=[cap(Mode.MULTI_NODE_READER_ONLY, block=True)])
    assert world.stub.CreateVolume(req).volume.volume_id


def test_delete_is_idempotent_and_removes_everything(world: World) -> None:
    vid = world.create().volume_id
    world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    world.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="../../etc/passwd"))
    assert world.lio.storage_objects == {} and world.lio.targets == {}
    assert not (world.tmp / "pool" / f"{vid}.img").exists()
    assert json.loads((world.tmp / "saveconfig.json").read_text())["targets"] == []


def test_publish_grants_and_unpublish_revokes(world: World) -> None:
    vid = world.create().volume_id
    iqn = contract.target_iqn(vid)
    ctx = world.publish(vid)
    assert ctx["authentication"] == "none" and ctx["targetIQN"] == iqn
    assert world.lio.initiators(iqn) == ["iqn.1993-08.org.debian:01:aaa"]
    assert world.publish(vid) == ctx  # idempotent
    assert code_of(world.publish, vid, NODE, True) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(world.publish, vid, NODE2) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(world.stub.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=vid)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    for _ in range(2):
        world.stub.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE))
    assert world.lio.initiators(iqn) == []
    world.publish(vid, NODE2)


def test_publish_errors(world: World) -> None:
    vid = world.create().volume_id
    assert code_of(world.publish, "csi-" + "0" * 32) == grpc.StatusCode.NOT_FOUND
    assert code_of(world.publish, "not-ours") == grpc.StatusCode.NOT_FOUND
    assert code_of(world.publish, vid, "some-fake-node-id") == grpc.StatusCode.NOT_FOUND
    assert code_of(world.publish, "", NODE) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(world.publish, vid, "") == grpc.StatusCode.INVALID_ARGUMENT


def test_a_cloned_iqn_on_another_node_is_refused(world: World) -> None:
    a, b = world.create("a").volume_id, world.create("b").volume_id
    world.publish(a, "worker-1/iqn.2000-01.clone:x")
    assert code_of(world.publish, b, "worker-2/iqn.2000-01.clone:x") == grpc.StatusCode.FAILED_PRECONDITION
    world.stub.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=a, node_id="worker-1/iqn.2000-01.clone:x"))
    world.publish(b, "worker-2/iqn.2000-01.clone:x")  # the IQN is free again


def test_chap_comes_from_the_secret_and_never_reaches_an_error(world: World) -> None:
    vid = world.create(authentication="mutual").volume_id
    with pytest.raises(grpc.RpcError) as err:
        world.publish(vid, NODE, False, {"chapUser": "u", "chapPassword": "p-secret-1"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chapMutualPassword" in err.value.details() and "p-secret-1" not in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        world.publish(vid, NODE, False, {"chapUser": "u", "chapPassword": "has space", "chapMutualUser": "t",
                                         "chapMutualPassword": "x"})
    assert "has space" not in err.value.details()
    secrets = {"chapUser": "u", "chapPassword": "p-secret-1", "chapMutualUser": "t", "chapMutualPassword": "m-2"}
    assert world.publish(vid, NODE, False, secrets)["authentication"] == "mutual"
    acl = world.lio.targets[contract.target_iqn(vid)]["acls"]["iqn.1993-08.org.debian:01:aaa"]  # type: ignore[index]
    assert acl["chap"].password == "p-secret-1" and acl["chap"].mutual_password == "m-2"
    records = "".join(p.read_text() for p in (world.tmp / "state").rglob("*.json"))
    assert "p-secret-1" not in records and "m-2" not in records


def test_state_survives_a_restart_and_saveconfig_is_private(world: World) -> None:
    vid = world.create().volume_id
    world.publish(vid)
    saved = world.tmp / "saveconfig.json"
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    world.stop()
    world.restart()
    assert world.service.reconcile() == []
    entries = world.stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    assert [(e.volume.volume_id, list(e.status.published_node_ids)) for e in entries] == [(vid, [NODE])]


def test_reconcile_restores_lost_objects_and_reports_drift(world: World) -> None:
    vid = world.create().volume_id
    world.publish(vid)
    iqn = contract.target_iqn(vid)
    world.lio.targets.pop(iqn)
    world.lio.targets["iqn.2026-11.io.csi-iscsi:csi-" + "f" * 32] = {"acls": {}}
    drift = world.service.reconcile()
    assert any("restoring" in d for d in drift)
    assert any("no volume record" in d for d in drift)
    assert world.lio.initiators(iqn) == ["iqn.1993-08.org.debian:01:aaa"]


def test_a_failed_create_undoes_itself_and_the_retry_starts_afresh(world: World) -> None:
    world.lio.fail_in["ensure_target"] = 1
    assert code_of(world.create, "pvc-fail") == grpc.StatusCode.INTERNAL
    vid = contract.volume_id_for_name("pvc-fail")
    assert world.service.get(vid) is None and not (world.tmp / "state" / "volumes" / f"{vid}.json").exists()
    assert world.lio.storage_objects == {} and world.lio.targets == {}
    assert not (world.tmp / "pool" / f"{vid}.img").exists()
    assert world.create("pvc-fail").volume_id == vid
    assert world.service.get(vid).state == "ready"  # type: ignore[union-attr]


def test_a_create_a_crash_left_half_made_is_finished_by_the_retry(world: World) -> None:
    vid = contract.volume_id_for_name("pvc-crash")
    record = {"volume_id": vid, "name": "pvc-crash", "pool": "default", "capacity_bytes": GiB,
              "access_type": "mount", "access_modes": ["SINGLE_NODE_WRITER"],
              "parameters": {"pool": "default", "authentication": "none"}, "authentication": "none",
              "state": "creating", "grants": {}}
    world.stop()
    (world.tmp / "state" / "volumes").mkdir(parents=True, exist_ok=True)
    (world.tmp / "state" / "volumes" / f"{vid}.json").write_text(json.dumps(record))
    world.restart()  # what a controller killed after its first step finds
    assert any("left creating" in line for line in world.service.reconcile())
    assert world.stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries == []
    assert world.create("pvc-crash").volume_id == vid
    assert world.service.get(vid).state == "ready"  # type: ignore[union-attr]


def test_a_second_call_on_a_volume_in_flight_is_aborted(world: World) -> None:
    gate = threading.Event()
    world.lio.block_in["ensure_fileio"] = gate
    first = threading.Thread(target=world.create, args=("pvc-slow",))
    first.start()
    while "ensure_fileio" not in world.lio.calls:
        pass
    assert code_of(world.create, "pvc-slow") == grpc.StatusCode.ABORTED
    assert code_of(world.stub.DeleteVolume, csi_pb2.DeleteVolumeRequest(
        volume_id=contract.volume_id_for_name("pvc-slow"))) == grpc.StatusCode.ABORTED
    gate.set()
    first.join()
    assert world.service.get(contract.volume_id_for_name("pvc-slow")).state == "ready"  # type: ignore[union-attr]


def test_list_volumes_pages_with_real_tokens(world: World) -> None:
    ids = sorted(world.create(f"pvc-{i}").volume_id for i in range(5))
    seen, token = [], ""
    while True:
        reply = world.stub.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token))
        seen += [e.volume.volume_id for e in reply.entries]
        token = reply.next_token
        if not token:
            break
    assert seen == ids
    assert code_of(world.stub.ListVolumes, csi_pb2.ListVolumesRequest(starting_token="garbage")) == \
        grpc.StatusCode.ABORTED


def test_capacity_and_validation(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.statvfs_result((4096, 4096, 1 << 20, 1 << 19, 1 << 19, 0, 0, 0, 0, 255))  # 4 GiB, 2 GiB free
    monkeypatch.setattr("csi_iscsi.lio.pools.os.statvfs", lambda path: st)
    world.service._pools["default"].overprovision = 1.0  # type: ignore[attr-defined]
    before = world.stub.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity
    assert before == 2 * GiB - 4 * GiB // 20  # free space less the reserve (5% of the filesystem here)
    vid = world.create(size=100 * MiB).volume_id
    assert world.stub.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity == before - 100 * MiB
    other_zone = csi_pb2.GetCapacityRequest(accessible_topology=csi_pb2.Topology(
        segments={"topology.iscsi.csi-iscsi.io/zone": "elsewhere"}))
    assert world.stub.GetCapacity(other_zone).available_capacity == 0
    ok = world.stub.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=vid, volume_capabilities=[cap()]))
    assert ok.HasField("confirmed")
    no = world.stub.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=vid, volume_capabilities=[cap(block=True)]))
    assert not no.HasField("confirmed") and "mount volume" in no.message
    assert code_of(world.stub.ValidateVolumeCapabilities, csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="csi-" + "1" * 32, volume_capabilities=[cap()])) == grpc.StatusCode.NOT_FOUND


def test_fileio_expands_offline_only(world: World) -> None:
    vid = world.create(size=64 * MiB).volume_id
    world.publish(vid)
    req = csi_pb2.ControllerExpandVolumeRequest(volume_id=vid,
                                                capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB))
    assert code_of(world.stub.ControllerExpandVolume, req) == grpc.StatusCode.FAILED_PRECONDITION
    world.stub.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE))
    reply = world.stub.ControllerExpandVolume(req)
    assert reply.capacity_bytes == 128 * MiB and reply.node_expansion_required
    assert world.lio.storage_objects[vid]["size"] == 128 * MiB
    assert (world.tmp / "pool" / f"{vid}.img").stat().st_size == 128 * MiB
