from __future__ import annotations

import pytest

from csi_iscsi import contract
from csi_iscsi.contract import NodeId


def test_volume_id_is_a_pure_function_of_the_name() -> None:
    a = contract.volume_id_for_name("pvc-1")
    assert a == contract.volume_id_for_name("pvc-1")
    assert a != contract.volume_id_for_name("pvc-2")
    assert contract.is_volume_id(a)


def test_wwid_is_lio_prefix_plus_the_serial_digits() -> None:
    vid = contract.volume_id_for_name("pvc-1")
    serial = contract.unit_serial(vid)
    assert contract.wwid(vid) == "36001405" + serial.replace("-", "")[:25]
    assert contract.target_iqn(vid).endswith(":" + vid)
    assert contract.is_iqn(contract.target_iqn(vid))


@pytest.mark.parametrize("bad", ["", "csi-XYZ", "csi-" + "0" * 31, "../etc", "csi-" + "a" * 32 + "\n"])
def test_foreign_volume_ids_are_not_ours(bad: str) -> None:
    assert not contract.is_volume_id(bad)


def test_node_id_round_trips() -> None:
    node = NodeId("worker-1.example", "iqn.1993-08.org.debian:01:abc")
    assert NodeId.parse(str(node)) == node


@pytest.mark.parametrize("bad", [
    "worker-1", "worker-1/iqn.1993-08.org.debian:01:abc/x", "Worker/iqn.1993-08.org.debian:01:abc",
    "worker/not-an-iqn", "worker/iqn.1993-08.org.debian:01:a b", "w/" + "iqn.2000-01.x:" + "a" * 300,
])
def test_malformed_node_ids_are_refused(bad: str) -> None:
    assert NodeId.parse(bad) is None


@pytest.mark.parametrize("portal,ok", [
    ("10.0.0.1:3260", True), ("[fd00::1]:3260", True), ("10.0.0.1", False), ("host:3260", False),
    ("10.0.0.1:0", False), ("10.0.0.1:70000", False), ("10.0.0.1:3260;rm", False),
])
def test_portals(portal: str, ok: bool) -> None:
    assert contract.is_portal(portal) is ok
