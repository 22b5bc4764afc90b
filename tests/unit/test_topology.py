"""CreateVolume's accessibility requirements against the zones the controller serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi.base.errors import InvalidArgument, ResourceExhausted
from csi_iscsi.contract import TOPOLOGY_KEY
from csi_iscsi.csi import csi_pb2
from csi_iscsi.servicers.identity import PLUGIN_CAPABILITIES
from csi_iscsi.topology import accessible_zones
from tests.unit.test_controller import World, cap

SERVED = ("a", "b", "c")


def zone(z: str, **other: str) -> csi_pb2.Topology:
    return csi_pb2.Topology(segments={TOPOLOGY_KEY: z, **other})


def req(requisite: list[str] | None = None, preferred: list[str] | None = None) -> csi_pb2.TopologyRequirement:
    return csi_pb2.TopologyRequirement(requisite=[zone(z) for z in requisite or []],
                                       preferred=[zone(z) for z in preferred or []])


def test_without_requirements_every_served_zone() -> None:
    assert accessible_zones(SERVED, None) == ["a", "b", "c"]
    assert accessible_zones(SERVED, req()) == ["a", "b", "c"]


def test_requisite_narrows_and_preferred_orders() -> None:
    assert accessible_zones(SERVED, req(["c", "b", "x"])) == ["b", "c"]
    assert accessible_zones(SERVED, req(["c", "b", "x"], preferred=["c"])) == ["c", "b"]
    # Preferred alone only orders: the volume is still reachable from every served zone.
    assert accessible_zones(SERVED, req(preferred=["x", "c"])) == ["c", "a", "b"]


def test_no_served_zone_among_the_requisite_is_refused_with_the_zones_named() -> None:
    with pytest.raises(ResourceExhausted) as err:
        accessible_zones(SERVED, req(["x", "y"]))
    message = str(err.value)
    assert "'a', 'b', 'c'" in message and "'x'" in message and "--serve-zone" in message


def test_a_term_with_a_key_this_driver_does_not_report_cannot_be_promised() -> None:
    foreign = csi_pb2.TopologyRequirement(requisite=[zone("a", **{"example.com/rack": "r1"})])
    with pytest.raises(ResourceExhausted):
        accessible_zones(SERVED, foreign)
    with pytest.raises(InvalidArgument, match="no segments"):
        accessible_zones(SERVED, csi_pb2.TopologyRequirement(requisite=[csi_pb2.Topology()]))


def test_the_plugin_says_it_has_accessibility_constraints() -> None:
    kinds = [c.service.type for c in PLUGIN_CAPABILITIES if c.HasField("service")]
    assert csi_pb2.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in kinds


@pytest.fixture
def zoned(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path, zones=("a", "b"))
    yield world
    world.stop()


def create(world: World, name: str, requirements: csi_pb2.TopologyRequirement) -> csi_pb2.Volume:
    return world.stub.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=64 << 20), volume_capabilities=[cap()],
        accessibility_requirements=requirements)).volume


def test_create_volume_returns_where_the_volume_is_reachable_and_refuses_elsewhere(zoned: World) -> None:
    volume = create(zoned, "pvc-zoned", req(["b", "z"], preferred=["b"]))
    assert [dict(t.segments) for t in volume.accessible_topology] == [{TOPOLOGY_KEY: "b"}]
    again = create(zoned, "pvc-zoned", req(["b", "z"], preferred=["b"]))  # idempotent, same answer
    assert again.volume_id == volume.volume_id and again.accessible_topology == volume.accessible_topology
    with pytest.raises(grpc.RpcError) as err:
        create(zoned, "pvc-nowhere", req(["z"]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert zoned.service.get(volume.volume_id) is not None
    assert [r.name for r in zoned.service.page("", 0)[0]] == ["pvc-zoned"]  # the refused one made nothing
    listed = zoned.stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    assert [dict(t.segments) for t in listed[0].volume.accessible_topology] == [
        {TOPOLOGY_KEY: "a"}, {TOPOLOGY_KEY: "b"}]


def test_get_capacity_answers_the_request_external_provisioners_capacity_tracking_sends(zoned: World) -> None:
    """It asks per zone and StorageClass with one mount capability, access mode UNKNOWN: refused,
    no CSIStorageCapacity objects exist and no WaitForFirstConsumer pod is ever scheduled."""
    request = csi_pb2.GetCapacityRequest(
        volume_capabilities=[csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.UNKNOWN))],
        parameters={"csi.storage.k8s.io/fstype": "ext4"}, accessible_topology=zone("a"))
    assert zoned.stub.GetCapacity(request).available_capacity > 0
    request.accessible_topology.CopyFrom(zone("z"))
    assert zoned.stub.GetCapacity(request).available_capacity == 0


def test_an_existing_volume_asked_for_where_it_cannot_be_reached_is_already_exists(zoned: World) -> None:
    create(zoned, "pvc-here", req(["a"]))
    with pytest.raises(grpc.RpcError) as err:
        create(zoned, "pvc-here", req(["z"]))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, err.value.details()


def test_get_capacity_gives_no_room_for_a_capability_the_driver_cannot_serve(zoned: World) -> None:
    many = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(
                                        mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER))
    assert zoned.stub.GetCapacity(csi_pb2.GetCapacityRequest(volume_capabilities=[many])).available_capacity == 0
    assert zoned.stub.GetCapacity(csi_pb2.GetCapacityRequest(volume_capabilities=[cap()])).available_capacity > 0
