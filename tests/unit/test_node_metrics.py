"""The node's path metrics, scraped: per staged volume its active and down paths, its portals and
whether NodeGetVolumeStats would call it abnormal, from one multipathd call for all volumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from csi_iscsi.host.node_metrics import NodePathCollector
from tests.unit.test_node import VID, WWID, NodeWorld


@pytest.fixture
def world(tmp_path: Path) -> Iterator[NodeWorld]:
    w = NodeWorld(tmp_path)
    yield w
    w.channel.close()
    w.server.stop(0)


class Scrape:
    """One scrape's samples (CollectorRegistry.get_sample_value would collect again per lookup)."""

    def __init__(self, world: NodeWorld) -> None:
        registry = CollectorRegistry()
        registry.register(NodePathCollector(world.volumes.path_health))
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in registry.collect() for s in family.samples}

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.samples.get((name, tuple(sorted((labels or {}).items()))))


def scrape(world: NodeWorld) -> Scrape:
    return Scrape(world)


def test_paths_portals_and_condition_by_volume_from_one_multipathd_call(world: NodeWorld) -> None:
    world.stage()
    world.runner.on(["multipathd", "show", "paths"], stdout=f"{WWID} sdb failed faulty\n{WWID} sdc active ready\n")
    world.runner.calls.clear()
    registry = scrape(world)
    assert registry.get_sample_value("csi_iscsi_volume_paths", {"volume_id": VID, "state": "active"}) == 1
    assert registry.get_sample_value("csi_iscsi_volume_paths", {"volume_id": VID, "state": "down"}) == 1
    assert registry.get_sample_value("csi_iscsi_volume_portals", {"volume_id": VID}) == 2
    assert registry.get_sample_value("csi_iscsi_volume_abnormal", {"volume_id": VID}) == 1
    assert registry.get_sample_value("csi_iscsi_node_scrape_error") == 0
    assert [c for c in world.runner.calls if c[0] == "multipathd"] == [
        ("multipathd", "show", "paths", "raw", "format", "%w %d %t %T")]


def test_healthy_paths_and_an_orphan_path_counted_down_as_the_condition_does(world: NodeWorld) -> None:
    world.stage()
    world.runner.on(["multipathd", "show", "paths"], stdout=f"{WWID} sdb active ready\n{WWID} sdc active ready\n",
                    times=1)
    registry = scrape(world)
    assert registry.get_sample_value("csi_iscsi_volume_paths", {"volume_id": VID, "state": "active"}) == 2
    assert registry.get_sample_value("csi_iscsi_volume_abnormal", {"volume_id": VID}) == 0
    world.runner.on(["multipathd", "show", "paths"],
                    stdout=f"{WWID} sdb active ready\n{WWID} sdc active ready\n{WWID} sdd undef undef\n")
    registry = scrape(world)
    assert registry.get_sample_value("csi_iscsi_volume_paths", {"volume_id": VID, "state": "down"}) == 1
    assert registry.get_sample_value("csi_iscsi_volume_abnormal", {"volume_id": VID}) == 1


def test_no_staged_volume_means_no_series_and_a_silent_multipathd_a_scrape_error(world: NodeWorld) -> None:
    registry = scrape(world)
    assert registry.get_sample_value("csi_iscsi_volume_portals", {"volume_id": VID}) is None
    assert registry.get_sample_value("csi_iscsi_node_scrape_error") == 0
    world.stage()
    world.runner.on(["multipathd", "show", "paths"], returncode=1)
    registry = scrape(world)
    assert registry.get_sample_value("csi_iscsi_node_scrape_error") == 1
    assert world.volumes.staged(VID) is not None  # a scrape changes nothing
    world.unstage()


def test_a_single_path_volume_counts_one_portal_and_is_down_when_its_device_is_not_running(
        world: NodeWorld) -> None:
    """Reviewer: a single-path volume counted every portal, so the degraded alert fired for ever,
    and a dead session still counted as an active path."""
    from dataclasses import replace

    from csi_iscsi.host.stage_state import StageStateStore

    world.stage()
    store = StageStateStore(world.tmp / "state")
    state = store.get(VID)
    assert state is not None
    store.put(replace(state, device=str(world.dev / "sdb")))  # staged on one path
    (world.dev / "sdb").write_text("")
    (world.sys / "block" / "sdb" / "device" / "state").write_text("running\n")
    up = scrape(world)
    assert up.get_sample_value("csi_iscsi_volume_portals", {"volume_id": VID}) == 1
    assert up.get_sample_value("csi_iscsi_volume_paths", {"volume_id": VID, "state": "active"}) == 1
    assert up.get_sample_value("csi_iscsi_volume_abnormal", {"volume_id": VID}) == 0
    (world.sys / "block" / "sdb" / "device" / "state").write_text("transport-offline\n")
    down = scrape(world)
    assert down.get_sample_value("csi_iscsi_volume_paths", {"volume_id": VID, "state": "down"}) == 1
    assert down.get_sample_value("csi_iscsi_volume_abnormal", {"volume_id": VID}) == 1


def test_sessions_to_the_drivers_targets_by_state(world: NodeWorld) -> None:
    from prometheus_client import CollectorRegistry

    from csi_iscsi.host.node_metrics import NodeSessionCollector

    def sample(state: str) -> float | None:
        registry = CollectorRegistry()
        registry.register(NodeSessionCollector(world.volumes.session_states))
        return registry.get_sample_value("csi_iscsi_node_iscsi_sessions", {"state": state})

    assert (sample("LOGGED_IN"), sample("FAILED")) == (0, 0)  # every state at 0 before any session
    world.stage()
    assert (sample("LOGGED_IN"), sample("FAILED")) == (2, 0)
    (world.sys / "class/iscsi_session/session2/state").write_text("FAILED\n")
    assert (sample("LOGGED_IN"), sample("FAILED"), sample("FREE")) == (1, 1, 0)
    world.runner.calls.clear()
    sample("LOGGED_IN")
    assert world.runner.calls == []  # sysfs only
