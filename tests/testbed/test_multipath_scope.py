"""dm-multipath on a node that has other disks: the driver's drop-in (deploy/node/) touches LIO LUNs
only, Debian's find_multipaths strict stays, and the node plugin makes multipathd build exactly its
volumes' maps. Unsafe effective settings make the node not ready, with the reason."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_iscsi.csi import csi_pb2
from csi_iscsi.host import multipath_config

from .conftest import leftovers
from .plugins import MiB
from .test_node import Cluster, cluster  # noqa: F401 - the fixture

UNSAFE = Path("/etc/multipath/conf.d/zz-testbed-unsafe.conf")


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def effective_lio() -> multipath_config.LioSettings:
    return multipath_config.lio_settings(multipath_config.parse(sh("multipathd", "show", "config")), "FILEIO")


@pytest.fixture
def other_disk() -> Iterator[str]:
    """A SCSI disk that is not LIO's (scsi_debug, vendor "Linux"), as a local or other storage's disk."""
    sh("modprobe", "scsi_debug", "dev_size_mb=16")
    sh("udevadm", "settle")
    found = [d.name for d in Path("/sys/block").glob("sd*") if (d / "device/model").read_text().strip() == "scsi_debug"]
    assert len(found) == 1, found
    yield found[0]
    for _ in range(30):
        if subprocess.run(["modprobe", "-r", "scsi_debug"], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("scsi_debug could not be unloaded: is its disk still held?")


def claimed(device: str) -> list[str]:
    """Why multipath would have the disk: a holder map, or udev marking it a multipath path."""
    why = [f"held by {h.name}" for h in (Path("/sys/block") / device / "holders").iterdir()]
    props = sh("udevadm", "info", "-q", "property", "-n", f"/dev/{device}")
    why += [line for line in props.splitlines() if line == "DM_MULTIPATH_DEVICE_PATH=1"]
    return why


def iface_records() -> list[str]:
    return [line.split()[0] for line in sh("iscsiadm", "-m", "iface").splitlines() if line.startswith("csi-")]


def test_the_drop_in_bounds_lio_queueing_and_the_node_is_ready(cluster: Cluster) -> None:  # noqa: F811
    settings = effective_lio()
    find = next(line.split()[1] for line in sh("multipathd", "show", "config").splitlines()
                if line.split()[:1] == ["find_multipaths"])
    print(f"effective for LIO-ORG/FILEIO: no_path_retry {settings.no_path_retry} x polling_interval "
          f"{settings.polling_interval} s = {settings.queue_seconds} s; user_friendly_names "
          f"{settings.user_friendly_names}; find_multipaths {find} (the distribution's)")
    assert (settings.no_path_retry, settings.user_friendly_names, settings.queue_seconds) == ("36", "no", 180)
    assert find == '"strict"'
    assert cluster.node.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value is True


def test_a_disk_that_is_not_lio_stays_unclaimed_while_volumes_come_and_go(cluster: Cluster,  # noqa: F811
                                                                          other_disk: str) -> None:
    assert claimed(other_disk) == []
    volume = cluster.create("pvc-scope", 64 * MiB)
    staging, target = cluster.attach(volume)
    (Path(target) / "f").write_text("on the LIO LUN\n")
    print(sh("multipath", "-ll"))
    # The one multipath map on the node is the volume's, named by its WWID.
    maps = [line.split()[0] for line in sh("dmsetup", "ls", "--target", "multipath").splitlines() if line.strip()]
    assert maps == [volume.volume_context["wwid"]]
    assert claimed(other_disk) == [], "multipathd took a disk the driver did not ask for"
    assert len(iface_records()) == 1
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []  # includes the wwids file entry
    assert iface_records() == [], "the driver's iface record outlived its last volume"
    assert claimed(other_disk) == []


def test_unsafe_multipath_settings_make_the_node_not_ready_with_the_reason(cluster: Cluster) -> None:  # noqa: F811
    UNSAFE.write_text('overrides {\n    user_friendly_names yes\n    no_path_retry queue\n}\n')
    try:
        sh("multipathd", "reconfigure")
        time.sleep(3)  # the health cache and multipathd's reload
        probe = cluster.node.identity.Probe(csi_pb2.ProbeRequest(), timeout=30)
        log = cluster.node_log.read_text()
        print(f"probe with overrides {{ user_friendly_names yes; no_path_retry queue }}: ready={probe.ready.value}")
        assert probe.ready.value is False
        assert "user_friendly_names yes" in log and "for ever" in log, log[-2000:]
    finally:
        UNSAFE.unlink(missing_ok=True)
        sh("multipathd", "reconfigure")
    time.sleep(3)
    assert cluster.node.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value is True
