"""The controller's VOLUME_CONDITION: ControllerGetVolume and ListVolumes say what is wrong with a
volume's export (data gone from the pool, LIO objects or ACLs missing), from one pool listing per
page, and never take a call in flight for a fault."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2
from tests.unit.test_controller import NODE, World, code_of
from tests.unit.test_controller_faults import LvmWorld

INITIATOR = NODE.split("/", 1)[1]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def lvm_world(tmp_path: Path) -> Iterator[LvmWorld]:
    w = LvmWorld(tmp_path)
    yield w
    w.stop()


def get(world: World, vid: str) -> csi_pb2.ControllerGetVolumeResponse:
    return world.stub.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=vid))


def listed(world: World) -> dict[str, csi_pb2.VolumeCondition]:
    entries = world.stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    return {e.volume.volume_id: e.status.volume_condition for e in entries}


def test_the_controller_offers_get_volume_and_volume_condition(world: World) -> None:
    caps = {c.rpc.type for c in world.stub.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest()).capabilities}
    Cap = csi_pb2.ControllerServiceCapability.RPC
    assert {Cap.GET_VOLUME, Cap.VOLUME_CONDITION} <= caps


def test_a_healthy_published_volume_is_normal_in_get_and_list(world: World) -> None:
    vid = world.create().volume_id
    world.publish(vid)
    answer = get(world, vid)
    assert answer.volume.volume_id == vid and answer.volume.capacity_bytes == 64 * 1024 * 1024
    assert list(answer.status.published_node_ids) == [NODE]
    assert answer.status.volume_condition == csi_pb2.VolumeCondition(abnormal=False, message="")
    assert listed(world)[vid] == csi_pb2.VolumeCondition(abnormal=False, message="")


def test_an_acl_removed_behind_the_controller_is_abnormal_and_named(world: World) -> None:
    vid = world.create().volume_id
    world.publish(vid)
    world.lio.targets[contract.target_iqn(vid)]["acls"].clear()  # type: ignore[attr-defined]
    condition = get(world, vid).status.volume_condition
    assert condition.abnormal
    assert INITIATOR in condition.message and "no ACL" in condition.message
    assert listed(world)[vid] == condition


def test_a_backing_file_deleted_behind_the_controller_is_abnormal(world: World) -> None:
    healthy, broken = world.create("pvc-ok").volume_id, world.create("pvc-gone").volume_id
    (world.tmp / "pool" / f"{broken}.img").unlink()
    conditions = listed(world)
    assert not conditions[healthy].abnormal
    assert conditions[broken].abnormal and "missing from pool default" in conditions[broken].message
    assert get(world, broken).status.volume_condition == conditions[broken]


def test_a_target_gone_from_lio_is_abnormal(world: World) -> None:
    vid = world.create().volume_id
    del world.lio.targets[contract.target_iqn(vid)]
    condition = get(world, vid).status.volume_condition
    assert condition.abnormal and f"no target {contract.target_iqn(vid)}" in condition.message


def test_a_volume_with_a_call_in_flight_is_not_called_abnormal(world: World) -> None:
    vid = world.create().volume_id
    del world.lio.targets[contract.target_iqn(vid)]  # as a publish may see it half-way
    with world.servicer._locks.hold(vid, "ControllerPublishVolume"):
        condition = get(world, vid).status.volume_condition
        assert listed(world)[vid] == condition
    assert not condition.abnormal and "in progress" in condition.message
    assert get(world, vid).status.volume_condition.abnormal


def test_get_volume_of_an_unknown_or_foreign_id_is_not_found(world: World) -> None:
    assert code_of(get, world, "csi-" + "0" * 32) == grpc.StatusCode.NOT_FOUND
    assert code_of(get, world, "not-ours") == grpc.StatusCode.NOT_FOUND
    assert code_of(get, world, "") == grpc.StatusCode.INVALID_ARGUMENT


def test_listing_lvm_volumes_asks_lvm_once_per_page_not_once_per_volume(lvm_world: LvmWorld) -> None:
    vids = [lvm_world.create(f"pvc-{i}").volume_id for i in range(5)]
    del lvm_world.lvm.lvs[vids[2]]
    lvm_world.runner.calls.clear()
    conditions = listed(lvm_world)
    lvs = [c for c in lvm_world.runner.calls if c[0] == "lvs"]
    # One listing for the page, and one call to confirm the volume the listing missed.
    assert len(lvs) == 2, lvs
    assert [v for v in vids if conditions[v].abnormal] == [vids[2]]


def test_a_pool_lvm_cannot_read_is_abnormal_with_the_reason(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create().volume_id
    lvm_world.lvm.broken.add("lvs")
    condition = listed(lvm_world)[vid]
    assert condition.abnormal and "pool thin could not be" in condition.message


def test_a_condition_check_never_turns_a_publish_away(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reviewer's H1: a check that held the volume's lock made a publish in the meantime ABORTED."""
    import threading

    vid = world.create().volume_id
    inside, release = threading.Event(), threading.Event()
    faults = world.service.faults

    def slow_faults(*args: object, **kwargs: object) -> list[str]:
        inside.set()
        release.wait(5)
        return faults(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(world.service, "faults", slow_faults)
    looked: list[csi_pb2.VolumeCondition] = []
    looker = threading.Thread(target=lambda: looked.append(get(world, vid).status.volume_condition))
    looker.start()
    assert inside.wait(5)
    world.publish(vid)  # not ABORTED by the check in flight
    release.set()
    looker.join(5)
    # The publish ran during the look: the look does not vouch for what it saw half-way.
    assert not looked[0].abnormal and "changed the volume during the check" in looked[0].message


def test_a_busy_volume_keeps_its_last_known_fault_not_a_cure(world: World) -> None:
    vid = world.create().volume_id
    del world.lio.targets[contract.target_iqn(vid)]
    broken = get(world, vid).status.volume_condition
    assert broken.abnormal
    with world.servicer._locks.hold(vid, "ControllerExpandVolume"):
        assert get(world, vid).status.volume_condition == broken
        assert listed(world)[vid] == broken


def test_get_volume_of_a_volume_being_created_is_not_found(world: World) -> None:
    from dataclasses import replace

    vid = world.create().volume_id
    record = world.service.get(vid)
    assert record is not None
    world.service._records.put(replace(record, state="creating"))
    assert code_of(get, world, vid) == grpc.StatusCode.NOT_FOUND


def test_a_failed_listing_is_not_asked_again_per_volume(lvm_world: LvmWorld) -> None:
    """Reviewer's H3: with LVM failing, each volume asked LVM again, one call after another."""
    for i in range(5):
        lvm_world.create(f"pvc-{i}")
    lvm_world.lvm.broken.add("lvs")
    lvm_world.runner.calls.clear()
    conditions = listed(lvm_world)
    assert len([c for c in lvm_world.runner.calls if c[0] == "lvs"]) == 1
    assert all(c.abnormal and "could not be listed" in c.message for c in conditions.values())


def test_a_restart_reports_what_lio_lacks_and_changes_nothing_an_operator_may_have_set(world: World) -> None:
    """A disabled target or changed settings may be an operator's fence: a controller start names
    them and leaves them; it never grants an ACL, and never allocates over missing data."""
    chap = world.create("pvc-chap", authentication="chap").volume_id
    plain = world.create("pvc-plain").volume_id
    gone = world.create("pvc-gone").volume_id
    world.publish(plain)
    targets = world.lio.targets
    targets[contract.target_iqn(chap)]["chap"] = False
    targets[contract.target_iqn(plain)]["acls"].clear()  # type: ignore[attr-defined]
    targets[contract.target_iqn(gone)]["portals"] = []  # type: ignore[index]
    (world.tmp / "pool" / f"{gone}.img").unlink()
    world.stop()
    world.restart()
    drift = world.service.reconcile()  # what the controller does at start
    assert any("does not ask for CHAP" in d and d.endswith("(left as it is)") for d in drift), drift
    assert targets[contract.target_iqn(chap)]["chap"] is False
    assert targets[contract.target_iqn(plain)]["acls"] == {}
    assert not (world.tmp / "pool" / f"{gone}.img").exists()
    conditions = listed(world)
    assert conditions[chap].abnormal and "does not ask for CHAP" in conditions[chap].message
    assert conditions[plain].abnormal and conditions[plain].message == (
        f"no ACL lets {INITIATOR} in, though the volume is published to it")
    assert conditions[gone].abnormal and "missing from pool default" in conditions[gone].message
