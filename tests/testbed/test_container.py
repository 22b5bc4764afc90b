"""The plugins run from the driver's container image (image/build), started the way the chart
starts them: the controller privileged in the host network with configfs, the pool and the LIO
config mounted; the node privileged with the host's PID namespace, running the host's iscsiadm,
multipath and mount through nsenter (--host-pid=1, the chart's default), the kubelet directory
shared both ways. podman stands in for the kubelet; the kernel, LIO and the initiator are real."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from csi_iscsi import __version__
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers
from .plugins import PORTALS, MiB, Stubs
from .test_node import Cluster, drop_caches, sha

IMAGE = f"localhost/csi-iscsi:{__version__}"
ARCHIVE = Path(f"/images/csi-iscsi-{__version__}.tar")
ROOT = Path("/var/tmp/csi-container-test")  # stands for the kubelet directory
STATE = Path("/var/lib/csi-iscsi-container-test")
SOCKETS = Path("/run/csi-container-test")


@dataclass
class ContainerPlugin(Stubs):
    name: str


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # The VM runs no D-Bus, so podman manages cgroups itself and logs events to a file.
    return subprocess.run(["podman", "--cgroup-manager=cgroupfs", "--events-backend=file", *args],
                          capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if not ARCHIVE.exists():
        if os.environ.get("REQUIRE_IMAGE") == "1":
            pytest.fail(f"{ARCHIVE} missing: image/build must run before the testbed suite")
        pytest.skip(f"no image archive at {ARCHIVE}: run image/build first")
    start = time.monotonic()
    podman("load", "--quiet", "--input", str(ARCHIVE), timeout=900)
    print(f"podman load of {ARCHIVE.name}: {time.monotonic() - start:.1f} s")
    return IMAGE


@contextmanager
def container(name: str, run_args: list[str], sock: Path) -> Iterator[ContainerPlugin]:
    podman("rm", "--force", "--ignore", name)
    podman("run", "--detach", "--name", name, *run_args)
    channel = grpc.insecure_channel(f"unix:{sock}")
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=120)
        except grpc.FutureTimeoutError:
            logs = podman("logs", name, check=False)
            raise RuntimeError(f"container {name} did not serve on {sock}: {logs.stdout}{logs.stderr}") from None
        yield ContainerPlugin(channel, name)
    finally:
        channel.close()
        # A test may remove the container on purpose (a rollout); otherwise it must stop cleanly.
        if podman("container", "exists", name, check=False).returncode == 0:
            podman("stop", "--time", "30", name, check=False)
            rc = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False).stdout.strip()
            logs = podman("logs", name, check=False)
            Path(f"/var/tmp/{name}.log").write_text(logs.stdout + logs.stderr)
            podman("rm", "--force", name, check=False)
            assert rc == "0", f"container {name} exited with {rc} on SIGTERM; log ends: {logs.stderr[-3000:]}"


def controller_run_args(image: str, pools: list[str], mounts: list[Path], saveconfig: Path) -> list[str]:
    # As the chart's Deployment: host network and PID (LVM runs as the host's via nsenter), configfs.
    args = ["--privileged", "--network=host", "--pid=host"]
    for m in ["/sys/kernel/config", "/dev", str(STATE), *map(str, mounts), str(saveconfig.parent), str(SOCKETS)]:
        args += ["--volume", f"{m}:{m}"]
    args += ["--volume", "/lib/modules:/lib/modules:ro", image, "controller", "--host-pid=1",
             "--endpoint", f"unix://{SOCKETS}/controller.sock", "--state-dir", str(STATE),
             "--saveconfig", str(saveconfig)]
    for pool in pools:
        args += ["--pool", pool]
    for portal in PORTALS:
        args += ["--portal", portal]
    return args


def node_run_args(image: str) -> list[str]:
    args = ["--privileged", "--network=host", "--pid=host"]
    for m in ["/dev", "/sys", "/etc/iscsi", str(STATE), str(SOCKETS)]:
        args += ["--volume", f"{m}:{m}"]
    # The kubelet directory, shared both ways as the chart's Bidirectional mount propagation does.
    args += ["--volume", f"{ROOT}:{ROOT}:rshared", "--volume", "/run/udev:/run/udev:ro",
             "--volume", "/lib/modules:/lib/modules:ro", image, "node",
             "--endpoint", f"unix://{SOCKETS}/node.sock", "--host-pid=1", "--node-name", "testbed",
             "--state-dir", str(STATE), "--replacement-timeout", "5", "--login-timeout", "5"]
    return args


@contextmanager
def plugin_containers(image: str, pools: list[str], mounts: list[Path], saveconfig: Path,
                      initiator_iqn: str) -> Iterator[Cluster]:
    for d in (ROOT, STATE, SOCKETS, saveconfig.parent, *mounts):
        d.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        controller = stack.enter_context(container(
            "csi-controller", controller_run_args(image, pools, mounts, saveconfig), SOCKETS / "controller.sock"))
        node = stack.enter_context(container("csi-node", node_run_args(image), SOCKETS / "node.sock"))
        yield Cluster(controller, node, str(NodeId("testbed", initiator_iqn)), ROOT,
                      SOCKETS / "node.sock", Path("/var/tmp/csi-node.log"), STATE)
    subprocess.run(["rm", "-rf", str(ROOT), str(STATE), *map(str, mounts)], check=False)


@pytest.fixture
def containers(image: str, tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    pool = Path("/var/tmp/csi-container-pool")
    with plugin_containers(image, [f"name=default,type=fileio,path={pool}"], [pool], tmp_path / "lio" / "save.json",
                           initiator_iqn) as cluster:
        yield cluster


def test_plugins_from_the_image_attach_write_and_detach_cleanly(containers: Cluster) -> None:
    assert containers.node.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value
    assert containers.controller.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value
    volume = containers.create("pvc-container")
    staging, target = containers.attach(volume)
    # The mount was made in the host's namespace by nsenter and is visible here, outside the container.
    findmnt = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", target], capture_output=True, text=True)
    assert "/dev/mapper/" in findmnt.stdout or "/dev/dm-" in findmnt.stdout, findmnt.stdout
    data = os.urandom(8 * MiB)
    (Path(target) / "data").write_bytes(data)
    containers.detach(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []
    staging, target = containers.attach(volume)
    drop_caches()
    assert sha(Path(target) / "data") == hashlib.sha256(data).hexdigest()
    containers.detach(volume)
    containers.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


def test_node_container_replaced_while_staged_still_unstages(containers: Cluster, image: str) -> None:
    """A DaemonSet rollout: the node container goes away with a volume staged; the new one, with the
    same host state directory, must still tear everything down."""
    volume = containers.create("pvc-rollout")
    staging, target = containers.attach(volume)
    podman("rm", "--force", "csi-node")
    with container("csi-node", node_run_args(image), SOCKETS / "node.sock") as node:
        containers.detach(volume, node=node)
    assert leftovers(volume.volume_id, [staging, target]) == []
    containers.delete(volume)


def test_lvm_thin_pool_from_the_image_grows_online(image: str, thin_vg: str, tmp_path: Path,
                                                   initiator_iqn: str) -> None:
    """lvcreate/lvextend/lvremove issued from the controller container run as the host's (nsenter),
    so the host's udev and LVM locking take part; the volume grows while mounted."""
    pools = [f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin"]
    with plugin_containers(image, pools, [], tmp_path / "lio" / "save.json", initiator_iqn) as cluster:
        volume = cluster.create("pvc-container-thin", 128 * MiB)
        lvs = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", thin_vg], capture_output=True, text=True)
        assert volume.volume_id in lvs.stdout
        _, target = cluster.attach(volume)
        before = os.statvfs(target)
        reply = cluster.controller.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB)), timeout=120)
        assert reply.node_expansion_required
        cluster.node.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=volume.volume_id, volume_path=target,
            capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB)), timeout=120)
        after = os.statvfs(target)
        assert after.f_blocks * after.f_frsize > 1.8 * before.f_blocks * before.f_frsize
        cluster.detach(volume)
        cluster.delete(volume)
        lvs = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", thin_vg], capture_output=True, text=True)
        assert volume.volume_id not in lvs.stdout
