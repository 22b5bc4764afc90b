"""Pool figures scraped by Prometheus, checked by name and value against what the pools and
GetCapacity say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from csi_iscsi.csi import csi_pb2
from csi_iscsi.lio.pool_metrics import PoolCollector
from tests.unit.test_controller import MiB, World
from tests.unit.test_controller_faults import LvmWorld, fake_fs


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


def scrape(world: World) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PoolCollector(world.service))
    return registry


def capacity(world: World) -> int:
    return world.stub.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity


def test_thin_pool_figures_are_lvm_s_and_provisioned_counts_volumes_and_snapshots(lvm_world: LvmWorld) -> None:
    vid = lvm_world.create("pvc-a", 64 * MiB).volume_id
    lvm_world.create("pvc-b", 32 * MiB)
    lvm_world.stub.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="snap-a", source_volume_id=vid))
    lvm_world.lvm.usage = (42.5, 7.25)
    registry = scrape(lvm_world)
    labels = {"pool": "thin", "type": "lvm-thin"}
    size = lvm_world.lvm.lvs["thin"]
    assert registry.get_sample_value("csi_iscsi_pool_size_bytes", labels) == size
    assert registry.get_sample_value("csi_iscsi_pool_used_bytes", labels) == int(size * 0.425)
    assert registry.get_sample_value("csi_iscsi_pool_provisioned_bytes", labels) == (64 + 32 + 64) * MiB
    assert registry.get_sample_value("csi_iscsi_pool_available_bytes", labels) == capacity(lvm_world)
    assert registry.get_sample_value("csi_iscsi_thin_pool_data_ratio", {"pool": "thin"}) == pytest.approx(0.425)
    assert registry.get_sample_value("csi_iscsi_thin_pool_metadata_ratio", {"pool": "thin"}) == pytest.approx(0.0725)
    assert registry.get_sample_value("csi_iscsi_pool_scrape_error", {"pool": "thin"}) == 0


def test_a_pool_that_cannot_be_read_is_flagged_not_a_failed_scrape(lvm_world: LvmWorld) -> None:
    lvm_world.create()
    lvm_world.lvm.broken.add("lvs")
    registry = scrape(lvm_world)
    assert registry.get_sample_value("csi_iscsi_pool_scrape_error", {"pool": "thin"}) == 1
    assert registry.get_sample_value("csi_iscsi_pool_size_bytes", {"pool": "thin", "type": "lvm-thin"}) is None


def test_fileio_pool_figures_are_its_filesystem_s(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.create("pvc-a", 64 * MiB)
    fake_fs(monkeypatch, total=10 * 1024 * MiB, avail=6 * 1024 * MiB)
    registry = scrape(world)
    labels = {"pool": "default", "type": "fileio"}
    assert registry.get_sample_value("csi_iscsi_pool_size_bytes", labels) == 10 * 1024 * MiB
    assert registry.get_sample_value("csi_iscsi_pool_used_bytes", labels) == 4 * 1024 * MiB
    assert registry.get_sample_value("csi_iscsi_pool_provisioned_bytes", labels) == 64 * MiB
    assert registry.get_sample_value("csi_iscsi_pool_available_bytes", labels) == capacity(world)
    assert registry.get_sample_value("csi_iscsi_thin_pool_data_ratio", {"pool": "default"}) is None


def test_a_scrape_during_another_gets_what_the_last_one_read(lvm_world: LvmWorld,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """LVM locked by a long command must not pile scrapes (and lvs processes) up behind each other."""
    import threading

    from prometheus_client.core import GaugeMetricFamily

    collector = PoolCollector(lvm_world.service)
    first = list(collector.collect())
    inside, release = threading.Event(), threading.Event()
    read = collector._read

    def slow() -> list[GaugeMetricFamily]:
        inside.set()
        release.wait(5)
        return read()

    monkeypatch.setattr(collector, "_read", slow)
    slow_scrape = threading.Thread(target=lambda: list(collector.collect()))
    slow_scrape.start()
    assert inside.wait(5)
    lvm_world.runner.calls.clear()
    assert [f.name for f in collector.collect()] == [f.name for f in first]
    assert not [c for c in lvm_world.runner.calls if c[0] == "lvs"]
    release.set()
    slow_scrape.join(5)
