"""Nodes that share one kernel and one iscsid, as kind nodes do (docs/e2e.md): each node is a
network namespace of its own, iSCSI netlink serves only the initial one, so the one iscsid runs
there and each node reaches it through a socket bridge (the chart's node.iscsidBridgeSocket).
Two node plugins, each in its own namespace with its own IQN, stage volumes through the one
iscsid; each login presents its own node's IQN, so each is let in by its own ACL only."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers
from .plugins import running, session_initiators
from .test_node import NODE_ARGS, Cluster, controller_args

BRIDGE_DIR = Path("/run/csi-iscsid-bridge")
SOCKET = BRIDGE_DIR / "iscsid.sock"
NODES = {"kind-worker": "iqn.2026-11.io.csi-iscsi:kind-worker", "kind-worker2": "iqn.2026-11.io.csi-iscsi:kind-worker2"}


def _in(ns: str) -> tuple[str, ...]:
    # Only the network namespace, as a pod with hostNetwork on a kind node; `ip netns exec` would also
    # give the process a mount namespace of its own, hiding its mounts from the test.
    return ("nsenter", f"--net=/run/netns/{ns}", "--")


def _wait(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


@pytest.fixture
def shared_iscsid() -> Iterator[list[str]]:
    """Two node namespaces bridged to the initial namespace's iscsid; multipathd off, as on a kind
    host (it would claim every path for a map the nodes cannot see)."""
    subprocess.run(["systemctl", "stop", "multipathd.socket", "multipathd.service"], check=False)
    BRIDGE_DIR.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(["socat", f"UNIX-LISTEN:{SOCKET},fork,unlink-early",
                               "ABSTRACT-CONNECT:ISCSIADM_ABSTRACT_NAMESPACE"])]
    try:
        _wait(SOCKET)
        for ns in NODES:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            # What the chart's iscsid-bridge container runs in each node pod.
            procs.append(subprocess.Popen([*_in(ns), "socat",
                                           "ABSTRACT-LISTEN:ISCSIADM_ABSTRACT_NAMESPACE,fork",
                                           f"UNIX-CONNECT:{SOCKET}"]))
        time.sleep(1)
        yield list(NODES)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        for ns in NODES:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        subprocess.run(["systemctl", "start", "multipathd.socket", "multipathd.service"], check=False)


def test_two_nodes_stage_through_one_shared_iscsid(shared_iscsid: list[str], tmp_path: Path) -> None:
    root = Path("/var/tmp/csi-shared-iscsid")
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        controller = stack.enter_context(running(
            controller_args(root / "ctl", [f"name=default,type=fileio,path={pool}"], tmp_path / "save.json"),
            tmp_path / "c.sock", tmp_path / "controller.log"))
        clusters = []
        for ns, iqn in NODES.items():
            # The later --node-name wins over NODE_ARGS' one.
            args = [*NODE_ARGS, "--node-name", ns, "--initiator-iqn", iqn, "--multipath", "preferred",
                    "--state-dir", str(root / ns)]
            node = stack.enter_context(running(args, tmp_path / f"{ns}.sock", tmp_path / f"{ns}.log",
                                               prefix=_in(ns)))
            # Probe asks the socket: through the bridge, iscsid is there.
            assert node.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value
            clusters.append(Cluster(controller, node, str(NodeId(ns, iqn)), root / f"{ns}-mounts",
                                    tmp_path / f"{ns}.sock", tmp_path / f"{ns}.log", root / ns))
        volumes = [c.create(f"pvc-shared-{i}") for i, c in enumerate(clusters)]
        targets = []
        for cluster, volume, iqn in zip(clusters, volumes, NODES.values(), strict=True):
            _, target = cluster.attach(volume)
            (Path(target) / "owner").write_text(iqn)
            assert session_initiators(volume.volume_id) == {iqn}
            targets.append(target)
        for cluster, volume, target, iqn in zip(clusters, volumes, targets, NODES.values(), strict=True):
            assert (Path(target) / "owner").read_text() == iqn
            cluster.detach(volume)
            cluster.delete(volume)
            assert leftovers(volume.volume_id, [target]) == []
    subprocess.run(["rm", "-rf", str(root)], check=False)
