"""The node plugin with the controller, both over their sockets on the real kernel: attach over
two paths, mkfs only when blank, mount into pods, failover, and a detach that leaves nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers, scrub_iscsi_and_lio
from .plugins import PORTALS, MiB, Plugin, Stubs, block_cap, controller_args, mount_cap, running, session_initiators

NODE_ARGS = ["node", "--node-name", "testbed", "--replacement-timeout", "5", "--noop-interval", "2",
             "--noop-timeout", "2", "--login-timeout", "5"]
NODE_METRICS_PORT = 19091


def status(cluster: Cluster, *volume_ids: str) -> dict[str, Any]:
    """`csi-iscsi status --json` on this host, as an operator runs it."""
    import json
    import sys

    proc = subprocess.run([sys.executable, "-m", "csi_iscsi", "status", "--json", "--side", "node", "--state-dir",
                           str(cluster.state), *volume_ids], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def scrape_paths(volume_id: str) -> dict[str, float]:
    """The node plugin's path metrics for one volume, over HTTP as Prometheus reads them."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{NODE_METRICS_PORT}/metrics", timeout=30).read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("volume_id") == volume_id:
                found[s.name + (f"/{s.labels['state']}" if "state" in s.labels else "")] = s.value
            elif s.name == "csi_iscsi_node_scrape_error":
                found[s.name] = s.value
    return found


def scrape_sessions() -> dict[str, float]:
    """The node plugin's csi_iscsi_node_iscsi_sessions by state."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{NODE_METRICS_PORT}/metrics", timeout=30).read().decode()
    return {s.labels["state"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "csi_iscsi_node_iscsi_sessions"}


@dataclass
class Cluster:
    controller: Stubs
    node: Stubs
    node_id: str
    root: Path
    node_sock: Path
    node_log: Path
    state: Path

    def create(self, name: str, size: int = 128 * MiB, cap: csi_pb2.VolumeCapability | None = None,
               **params: str) -> csi_pb2.Volume:
        return self.controller.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[cap or mount_cap()], parameters=params), timeout=60).volume

    def attach(self, volume: csi_pb2.Volume, cap: csi_pb2.VolumeCapability | None = None,
               secrets: dict[str, str] | None = None) -> tuple[str, str]:
        """ControllerPublish + NodeStage + NodePublish; returns (staging path, target path)."""
        cap = cap or mount_cap()
        vid = volume.volume_id
        pctx = self.controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=self.node_id, volume_capability=cap, secrets=secrets or {}),
            timeout=60).publish_context
        staging, target = f"{self.root}/staging/{vid}", f"{self.root}/pods/{vid}/mount"
        self.node.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap, publish_context=pctx,
            volume_context=volume.volume_context, secrets=secrets or {}), timeout=600)
        self.node.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap,
            publish_context=pctx, volume_context=volume.volume_context), timeout=60)
        return staging, target

    def detach(self, volume: csi_pb2.Volume, node: Stubs | None = None) -> None:
        vid = volume.volume_id
        node = node or self.node
        node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=vid, target_path=f"{self.root}/pods/{vid}/mount"), timeout=60)
        node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=f"{self.root}/staging/{vid}"), timeout=120)
        self.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=vid, node_id=self.node_id), timeout=60)

    def delete(self, volume: csi_pb2.Volume) -> None:
        self.controller.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)


@pytest.fixture
def cluster(tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    yield from node_cluster(tmp_path, initiator_iqn)


def node_cluster(tmp_path: Path, initiator_iqn: str, *node_flags: str) -> Iterator[Cluster]:
    """A controller with a fileio pool and a node plugin serving metrics; scrubbed however it ends."""
    root = Path("/var/tmp/csi-node-test")
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    state = Path("/var/lib/csi-iscsi-node-test")
    with ExitStack() as stack:
        controller = stack.enter_context(running(
            controller_args(state, [f"name=default,type=fileio,path={pool}"], tmp_path / "save.json"),
            tmp_path / "c.sock", tmp_path / "controller.log"))
        node_sock, node_log = tmp_path / "n.sock", tmp_path / "node.log"
        node = stack.enter_context(running([*NODE_ARGS, "--state-dir", str(state), "--metrics-address",
                                            f"127.0.0.1:{NODE_METRICS_PORT}", *node_flags], node_sock, node_log))
        try:
            yield Cluster(controller, node, str(NodeId("testbed", initiator_iqn)), root, node_sock, node_log, state)
        finally:
            # A failed test leaves its volumes staged; cleared here so it fails alone, not every later
            # test that counts LIO objects or sessions.
            stack.close()
            scrub_iscsi_and_lio(pool_dirs=(pool,))
            subprocess.run(["rm", "-rf", str(root), str(state)], check=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def drop_caches() -> None:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)


def test_lifecycle_keeps_data_across_unstage_and_stage(cluster: Cluster) -> None:
    volume = cluster.create("pvc-life")
    staging, target = cluster.attach(volume)
    data = os.urandom(8 * MiB)
    (Path(target) / "data").write_bytes(data)
    before = hashlib.sha256(data).hexdigest()
    assert len(subprocess.run(["findmnt", "-n", "-o", "TARGET", "--target", target], capture_output=True,
                              text=True).stdout.split()) == 1
    cluster.detach(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []
    assert not Path(target).exists()
    staging, target = cluster.attach(volume)
    drop_caches()
    assert sha(Path(target) / "data") == before
    # Stage and publish again: idempotent, nothing stacked.
    cluster.attach(volume)
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout.split()
    assert mounts.count(target) == 1 and mounts.count(staging) == 1
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


def test_records_are_manual_so_a_reboot_logs_nothing_in(cluster: Cluster) -> None:
    volume = cluster.create("pvc-boot")
    cluster.attach(volume)
    iqn = contract.target_iqn(volume.volume_id)
    for portal in PORTALS:
        record = subprocess.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal], capture_output=True,
                                text=True, check=True).stdout
        assert "node.startup = manual" in record and "node.session.scan = manual" in record
        assert "node.session.timeo.replacement_timeout = 5" in record
    # What the boot service does: log in every automatic record. Ours must not be among them.
    cluster.detach(volume)
    subprocess.run(["iscsiadm", "-m", "node", "--loginall=automatic"], capture_output=True, check=False)
    assert leftovers(volume.volume_id) == []
    cluster.delete(volume)


def test_an_existing_filesystem_is_never_reformatted(cluster: Cluster) -> None:
    volume = cluster.create("pvc-keepfs")
    _, target = cluster.attach(volume)
    (Path(target) / "keep").write_text("precious")
    cluster.detach(volume)
    xfs = mount_cap(fs_type="xfs")
    with pytest.raises(grpc.RpcError) as err:
        cluster.attach(volume, xfs)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not the requested 'xfs'" in err.value.details()
    cluster.node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=f"{cluster.root}/staging/{volume.volume_id}"))
    cluster.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id, node_id=cluster.node_id))
    _, target = cluster.attach(volume)
    assert (Path(target) / "keep").read_text() == "precious"
    cluster.detach(volume)
    cluster.delete(volume)


def test_block_volumes_are_never_formatted(cluster: Cluster) -> None:
    volume = cluster.create("pvc-block", cap=block_cap())
    staging, target = cluster.attach(volume, block_cap())
    marker = os.urandom(4096)
    with open(target, "r+b") as dev:
        assert dev.read(4096) == b"\0" * 4096
        dev.seek(0)
        dev.write(marker)
        os.fsync(dev.fileno())
    blkid = subprocess.run(["blkid", "-p", f"/dev/mapper/{contract.wwid(volume.volume_id)}"], capture_output=True)
    assert blkid.returncode == 2, blkid.stdout  # nothing was put on it
    stats = cluster.node.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=target))
    assert stats.usage[0].total == 128 * MiB and not stats.volume_condition.abnormal
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


def test_a_restarted_node_plugin_can_still_unstage(cluster: Cluster, tmp_path: Path) -> None:
    volume = cluster.create("pvc-restart")
    staging, target = cluster.attach(volume)
    node = cluster.node
    assert isinstance(node, Plugin)  # a process of ours, so it can be killed
    node.killed_by_test = True
    node.proc.send_signal(signal.SIGKILL)  # no chance to clean up
    node.proc.wait()
    sock2 = tmp_path / "n2.sock"
    with running([*NODE_ARGS, "--state-dir", str(cluster.state)], sock2, tmp_path / "node2.log") as node2:
        cluster.detach(volume, node2)
        assert leftovers(volume.volume_id, [staging, target]) == []
        cluster.delete(volume)


def test_unstage_without_state_still_cleans_everything(cluster: Cluster) -> None:
    volume = cluster.create("pvc-nostate")
    staging, target = cluster.attach(volume)
    (cluster.state / "node" / "volumes" / f"{volume.volume_id}.json").unlink()
    cluster.detach(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []
    cluster.delete(volume)


def fio(path: Path, seconds: int, name: str) -> subprocess.Popen[str]:
    # verify_state_save=0 and cwd=/tmp: fio's verify state files never land in the work tree (/src).
    return subprocess.Popen(
        ["fio", f"--name={name}", f"--filename={path}", "--size=16M", "--bs=16k", "--rw=randwrite",
         "--verify=crc32c", "--verify_backlog=32", "--verify_state_save=0", "--direct=1", "--ioengine=psync",
         f"--runtime={seconds}", "--time_based", "--output-format=terse"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/tmp")


def paths_of(wwid: str) -> list[tuple[str, str, str]]:
    out = subprocess.run(["multipathd", "show", "paths", "raw", "format", "%w %d %t %T"], capture_output=True,
                         text=True).stdout
    return [tuple(line.split()[1:4]) for line in out.splitlines() if line.startswith(wwid)]  # type: ignore[misc]


def wait_for(predicate: object, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - start


def test_a_dropped_portal_fails_over_without_io_errors_and_heals(cluster: Cluster) -> None:
    volume = cluster.create("pvc-failover")
    _, target = cluster.attach(volume)
    wwid = contract.wwid(volume.volume_id)
    job = fio(Path(target) / "fio.dat", 45, "failover")
    rule = "ip daddr 127.0.0.12 tcp dport 3260 drop"
    try:
        time.sleep(3)
        subprocess.run(["nft", "add", "table", "inet", "csitest"], check=True)
        subprocess.run(["nft", "add", "chain", "inet", "csitest", "out",
                        "{ type filter hook output priority 0 ; }"], check=True)
        subprocess.run(["nft", "add", "rule", "inet", "csitest", "out", *rule.split()], check=True)
        failed_after = wait_for(lambda: any(p[1] == "failed" for p in paths_of(wwid)), 40)
        stats = cluster.node.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
            volume_id=volume.volume_id, volume_path=target))
        assert stats.volume_condition.abnormal and "1 of 2 paths are down" in stats.volume_condition.message
        shown = status(cluster, volume.volume_id)
        [view] = shown["node"]["volumes"]
        by_portal = {p["portal"]: p for p in view["paths"]}
        assert by_portal["127.0.0.12:3260"]["dm_state"] == "failed", view
        assert by_portal["127.0.0.11:3260"]["dm_state"] == "active", view
        assert view["abnormal"] and "1 of 2 paths are down" in view["condition"]
        cut = scrape_paths(volume.volume_id)
        assert cut == {"csi_iscsi_volume_paths/active": 1, "csi_iscsi_volume_paths/down": 1,
                       "csi_iscsi_volume_portals": 2, "csi_iscsi_volume_abnormal": 1,
                       "csi_iscsi_node_scrape_error": 0}, cut
        during = scrape_sessions()
        print(f"sessions by state while the portal is cut: {during}")
        # Both sessions are still there (iscsid keeps recovering the cut one); which state the kernel
        # shows for it while its path is failed depends on how far its recovery got.
        assert sum(during.values()) == 2 and set(during) == {"LOGGED_IN", "FAILED", "FREE"}, during
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "csitest"], check=False)
    healed_after = wait_for(lambda: [p[1:] for p in paths_of(wwid)] == [("active", "ready")] * 2, 60)
    output, _ = job.communicate(timeout=120)
    print(f"path failed after {failed_after:.1f} s, healed after {healed_after:.1f} s")
    assert job.returncode == 0, output
    stats = cluster.node.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=target))
    assert not stats.volume_condition.abnormal, stats.volume_condition.message
    healed = scrape_paths(volume.volume_id)
    assert healed["csi_iscsi_volume_paths/active"] == 2 and healed["csi_iscsi_volume_abnormal"] == 0, healed
    assert scrape_sessions() == {"LOGGED_IN": 2, "FAILED": 0, "FREE": 0}
    cluster.detach(volume)
    cluster.delete(volume)
    assert scrape_paths(volume.volume_id) == {"csi_iscsi_node_scrape_error": 0}


def test_unstaging_one_volume_leaves_the_other_running(cluster: Cluster) -> None:
    a, b = cluster.create("pvc-a"), cluster.create("pvc-b")
    cluster.attach(a)
    _, target_b = cluster.attach(b)
    for vol in (a, b):  # each map carries only its own volume's WWID on every path
        wwid = contract.wwid(vol.volume_id)
        for dev in os.listdir(f"/sys/block/{os.path.basename(os.path.realpath(f'/dev/mapper/{wwid}'))}/slaves"):
            assert Path(f"/sys/block/{dev}/device/wwid").read_text().strip() == "naa." + wwid[1:]
    job = fio(Path(target_b) / "fio.dat", 20, "other")
    time.sleep(3)
    cluster.detach(a)
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 0, output
    assert leftovers(a.volume_id) == []
    assert [p[1:] for p in paths_of(contract.wwid(b.volume_id))] == [("active", "ready")] * 2
    cluster.detach(b)
    for vol in (a, b):
        cluster.delete(vol)


def test_chap_secrets_stay_out_of_logs_and_state(cluster: Cluster) -> None:
    secrets = {"chapUser": "node-user", "chapPassword": "node-password-42"}
    volume = cluster.create("pvc-chap", authentication="chap")
    cluster.attach(volume, secrets=secrets)
    state = (cluster.state / "node" / "volumes" / f"{volume.volume_id}.json").read_text()
    assert "node-password-42" not in state
    cluster.detach(volume)
    cluster.delete(volume)
    assert "node-password-42" not in cluster.node_log.read_text()
    assert "NodeStageVolume request" in cluster.node_log.read_text()


def test_expansion_reaches_the_filesystem(cluster: Cluster, thin_vg: str, tmp_path: Path) -> None:
    pools = [f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin"]
    with running(controller_args(cluster.state / "thinctl", pools, tmp_path / "save2.json"),
                 tmp_path / "c2.sock", tmp_path / "controller2.log") as controller2:
        cluster.controller, original = controller2, cluster.controller
        try:
            volume = cluster.create("pvc-expand", 128 * MiB)
            _, target = cluster.attach(volume)
            before = os.statvfs(target)
            reply = controller2.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
                volume_id=volume.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB)))
            assert reply.node_expansion_required
            grown = cluster.node.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
                volume_id=volume.volume_id, volume_path=target,
                capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB)))
            assert grown.capacity_bytes == 256 * MiB
            after = os.statvfs(target)
            assert after.f_blocks * after.f_frsize > 1.8 * before.f_blocks * before.f_frsize
            cluster.detach(volume)
            cluster.delete(volume)
        finally:
            cluster.controller = original


def test_login_presents_the_iqn_the_acl_was_made_for(cluster: Cluster, tmp_path: Path) -> None:
    """The node's IQN (--initiator-iqn here; a changed initiatorname file without an iscsid restart,
    or one iscsid shared by several kind nodes, in the field) differs from the name iscsid started
    with. The record carries the IQN the ACL was made for, so the login is accepted."""
    other = "iqn.2026-11.io.csi-iscsi:testbed-other-name"
    assert other not in Path("/etc/iscsi/initiatorname.iscsi").read_text()
    # A state directory of its own: the first node plugin still holds the cluster's (one owner each).
    args = [*NODE_ARGS, "--initiator-iqn", other, "--state-dir", str(cluster.state / "other-node")]
    with running(args, tmp_path / "n2.sock", tmp_path / "node2.log") as node2:
        original = (cluster.node, cluster.node_id)
        cluster.node, cluster.node_id = node2, str(NodeId("testbed", other))
        try:
            volume = cluster.create("pvc-iqn")
            staging, target = cluster.attach(volume)
            assert session_initiators(volume.volume_id) == {other}
            cluster.detach(volume)
            cluster.delete(volume)
            assert leftovers(volume.volume_id, [staging, target]) == []
        finally:
            cluster.node, cluster.node_id = original


RETRIED_BY_A_CO = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)


def as_a_co(call: Callable[..., object], request: object, timeout: float, retried: list[str],
            give_up: float) -> object:
    """One CSI call the way the external-attacher and kubelet make it: a deadline per try, and
    the same request again after DEADLINE_EXCEEDED, ABORTED or UNAVAILABLE (a call still running
    in the plugin makes the retry wait on its lock, then return what the first one did)."""
    while True:
        try:
            return call(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() not in RETRIED_BY_A_CO or time.monotonic() > give_up:
                raise
            retried.append(f"{type(request).__name__}: {exc.code().name}")
            time.sleep(1)


def test_twenty_volumes_staged_at_once(cluster: Cluster) -> None:
    """Twenty volumes attached at once through a node plugin with 8 gRPC workers: calls queue behind
    each other, so a try can pass its deadline; every volume must end staged and published, as it
    does under a CO that retries, and detach must leave nothing."""
    volumes = [cluster.create(f"pvc-many-{i}", 16 * MiB) for i in range(20)]
    errors: list[BaseException] = []
    retried: list[str] = []
    give_up = time.monotonic() + 900

    def one(volume: csi_pb2.Volume) -> None:
        cap, vid = mount_cap(), volume.volume_id
        staging, target = f"{cluster.root}/staging/{vid}", f"{cluster.root}/pods/{vid}/mount"
        try:
            pctx = as_a_co(cluster.controller.controller.ControllerPublishVolume,
                           csi_pb2.ControllerPublishVolumeRequest(volume_id=vid, node_id=cluster.node_id,
                                                                  volume_capability=cap),
                           60, retried, give_up).publish_context  # type: ignore[attr-defined]
            as_a_co(cluster.node.node.NodeStageVolume,
                    csi_pb2.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging,
                                                   volume_capability=cap, publish_context=pctx,
                                                   volume_context=volume.volume_context),
                    120, retried, give_up)
            as_a_co(cluster.node.node.NodePublishVolume,
                    csi_pb2.NodePublishVolumeRequest(volume_id=vid, staging_target_path=staging, target_path=target,
                                                     volume_capability=cap, publish_context=pctx,
                                                     volume_context=volume.volume_context),
                    60, retried, give_up)
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(v,)) for v in volumes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"20 volumes staged concurrently in {time.monotonic() - start:.1f} s; calls tried again: "
          f"{len(retried)} {sorted(set(retried))}")
    assert errors == [], f"{len(errors)} of 20 failed: {errors}\n--- node log, last lines ---\n{tail(cluster.node_log)}"
    # Timed as a node runs it, from the package installed on its own disk (a copy here, with its
    # bytecode compiled once), and from the testbed's 9p share, alternating.
    import shutil
    import sys

    installed = Path("/tmp/csi-iscsi-installed")
    shutil.rmtree(installed, ignore_errors=True)
    shutil.copytree(Path(__file__).resolve().parents[2] / "csi_iscsi", installed / "csi_iscsi")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    argv = [sys.executable, "-m", "csi_iscsi", "status", "--json", "--side", "node", "--state-dir", str(cluster.state)]
    subprocess.run(argv, env=env, cwd="/tmp", capture_output=True, timeout=120)  # compiles its bytecode
    took: dict[str, list[float]] = {"installed": [], "9p share": []}
    for _ in range(3):
        began = time.monotonic()
        subprocess.run(argv, env=env, cwd="/tmp", check=False, capture_output=True, timeout=120)
        took["installed"].append(time.monotonic() - began)
        began = time.monotonic()
        shown = status(cluster)
        took["9p share"].append(time.monotonic() - began)
    views = shown["node"]["volumes"]
    print("csi-iscsi status --json with 20 volumes staged: " +
          "; ".join(f"{where} {', '.join(f'{t:.2f}' for t in times)} s" for where, times in took.items()))
    assert sorted(v["volume_id"] for v in views) == sorted(v.volume_id for v in volumes)
    assert all(not v["abnormal"] and len(v["paths"]) == 2 and v["staging_mounted"] and len(v["pod_mounts"]) == 1
               for v in views), [v for v in views if v["abnormal"]]
    for volume in volumes:
        target = f"{cluster.root}/pods/{volume.volume_id}/mount"
        assert Path(target, "lost+found").is_dir(), f"{volume.volume_id} is not mounted at {target}"
    for volume in volumes:
        cluster.detach(volume)
        cluster.delete(volume)
    assert all(leftovers(v.volume_id) == [] for v in volumes)


def test_unstage_is_bounded_when_the_target_is_gone(cluster: Cluster) -> None:
    volume = cluster.create("pvc-gone")
    staging, target = cluster.attach(volume)
    (Path(target) / "data").write_bytes(b"x" * 4096)
    subprocess.run(["sync"], check=True)
    cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id,
                                                                             target_path=target))
    subprocess.run(["nft", "add", "table", "inet", "csigone"], check=True)
    subprocess.run(["nft", "add", "chain", "inet", "csigone", "out", "{ type filter hook output priority 0 ; }"],
                   check=True)
    subprocess.run(["nft", "add", "rule", "inet", "csigone", "out", "tcp", "dport", "3260", "drop"], check=True)
    try:
        start = time.monotonic()
        cluster.node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging), timeout=300)
        took = time.monotonic() - start
        print(f"unstage with every portal unreachable took {took:.1f} s")
        assert took < 180
        assert leftovers(volume.volume_id, [staging, target]) == []
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "csigone"], check=False)
    cluster.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id, node_id=cluster.node_id))
    cluster.delete(volume)


def test_a_larger_restore_of_a_snapshot_holds_its_files_in_a_grown_filesystem(cluster: Cluster, thin_vg: str,
                                                                             tmp_path: Path) -> None:
    """Through the whole data path: files written in a pod, a thin snapshot while the volume is in
    use, more written, then a volume twice the size made from the snapshot and staged: exactly the
    files at snapshot time, in a filesystem grown to the new size at stage."""
    pools = [f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin"]
    with running(controller_args(cluster.state / "snapctl", pools, tmp_path / "save3.json"),
                 tmp_path / "c3.sock", tmp_path / "controller3.log") as controller3:
        cluster.controller, original = controller3, cluster.controller
        try:
            volume = cluster.create("pvc-snap-src", 128 * MiB)
            _, target = cluster.attach(volume)
            before = os.urandom(4 * MiB)
            (Path(target) / "before").write_bytes(before)
            subprocess.run(["sync", "-f", str(Path(target) / "before")], check=True)
            snap = controller3.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
                name="snap-in-use", source_volume_id=volume.volume_id)).snapshot
            assert snap.ready_to_use
            (Path(target) / "after").write_bytes(os.urandom(MiB))
            source = csi_pb2.VolumeContentSource(
                snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
            restored = controller3.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
                name="pvc-snap-restored", capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB),
                volume_capabilities=[mount_cap()], volume_content_source=source), timeout=60).volume
            assert restored.capacity_bytes == 256 * MiB
            _, restored_target = cluster.attach(restored)
            assert sorted(p.name for p in Path(restored_target).iterdir() if p.name != "lost+found") == ["before"]
            assert sha(Path(restored_target) / "before") == hashlib.sha256(before).hexdigest()
            st = os.statvfs(restored_target)
            assert st.f_blocks * st.f_frsize > 200 * MiB, "the restored filesystem kept the snapshot's size"
            for v in (restored, volume):
                cluster.detach(v)
            controller3.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
            for v in (restored, volume):
                cluster.delete(v)
                assert leftovers(v.volume_id) == []
        finally:
            cluster.controller = original
