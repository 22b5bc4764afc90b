"""Fixtures for the real-kernel suite; it runs only inside the testbed VM (testbed/run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PORTALS = ["127.0.0.11:3260", "127.0.0.12:3260"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.testbed)
            if os.environ.get("TESTBED") != "1":
                item.add_marker(pytest.mark.skip(reason="needs the testbed VM: run it with testbed/run"))


@pytest.fixture
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Under /var/tmp so the backing files live on the VM's disk, not in the 9p share.
    path = Path("/var/tmp/csi-iscsi-pool")
    path.mkdir(parents=True, exist_ok=True)
    yield path


@pytest.fixture(scope="session")
def initiator_iqn() -> str:
    from csi_iscsi.host.initiator import read_initiator_name

    return read_initiator_name()
