"""The kind e2e suite runs against a cluster tests/e2e/run made; anywhere else it skips, saying why."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.kube import Kube

KUBECONFIG = os.environ.get("CSI_ISCSI_E2E_KUBECONFIG", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if KUBECONFIG:
        return
    skip = pytest.mark.skip(reason="kind e2e: no cluster (run tests/e2e/run, which needs a docker engine, kind, "
                                   "kubectl and helm; it reports why when they are missing)")
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    k = Kube(KUBECONFIG, os.environ.get("CSI_ISCSI_E2E_NAMESPACE", "csi-iscsi"))
    yield k


@pytest.fixture()
def ns(kube: Kube) -> Iterator[str]:
    """A namespace per test, deleted with everything in it afterwards."""
    name = kube.make_namespace()
    yield name
    kube.delete_namespace(name)
