"""Issue 10's node-side findings on the real kernel, each set up as the fault brings it about:
reads that fail under a LUN while writes still land (device-mapper under LIO's block backstore),
a reboot as the node sees it, a map held open during unstage, a stage that fails after login, a
read-only publish cut between bind and remount, failing blocks under a volume in use, and a command
stuck in uninterruptible I/O."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.base.runner import CommandTimedOut, SubprocessRunner
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2
from csi_iscsi.host.mounts import MountTable
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.lio.objects import Lio

from .conftest import leftovers
from .plugins import PORTALS, MiB, Stubs, block_cap, controller_args, mount_cap, running
from .test_node import NODE_ARGS, Cluster

ROOT = Path("/var/tmp/csi-node-faults")


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout).stdout


class FaultyDevice:
    """A device-mapper device over a loop file whose table a test swaps: linear (healthy), error (every
    I/O fails), or reads failing while writes still land (dm-delay sends reads and writes to two
    devices: reads to an error target, writes to the real blocks; Debian's 6.1 kernel has no
    read-only error target, and dm-flakey's read corruption does not work before 6.5)."""

    def __init__(self, name: str, size: int = 64 * MiB) -> None:
        self.name = name
        self.image = ROOT / f"{name}.img"
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size)
        self.loop = sh("losetup", "--find", "--show", str(self.image)).strip()
        self.sectors = size // 512
        sh("dmsetup", "create", f"{name}-err", "--table", f"0 {self.sectors} error")
        sh("dmsetup", "create", name, "--table", self._linear())
        self.path = f"/dev/mapper/{name}"

    def _linear(self) -> str:
        return f"0 {self.sectors} linear {self.loop} 0"

    def _load(self, table: str) -> None:
        sh("dmsetup", "suspend", self.name)
        sh("dmsetup", "load", self.name, "--table", table)
        sh("dmsetup", "resume", self.name)

    def healthy(self) -> None:
        self._load(self._linear())

    def failing(self) -> None:
        self._load(f"0 {self.sectors} error")

    def reads_failing(self) -> None:
        self._load(f"0 {self.sectors} delay /dev/mapper/{self.name}-err 0 0 {self.loop} 0 0")

    def remove(self) -> None:
        subprocess.run(["dmsetup", "remove", "--retry", self.name], check=False, capture_output=True)
        subprocess.run(["dmsetup", "remove", "--retry", f"{self.name}-err"], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", self.loop], check=False)
        self.image.unlink(missing_ok=True)


@dataclass
class Exported:
    """A volume id exported by our LIO code from a device of the test's choosing, as the controller
    exports an lvm-thin volume (block backstore, unit serial from the id, one target, LUN 0, ACL)."""

    volume_id: str
    device: FaultyDevice

    @property
    def iqn(self) -> str:
        return contract.target_iqn(self.volume_id)

    def context(self) -> dict[str, str]:
        return {"targetIQN": self.iqn, "portals": ",".join(PORTALS), "lun": "0",
                "wwid": contract.wwid(self.volume_id), "authentication": "none"}


@contextmanager
def exported(name: str, initiator_iqn: str) -> Iterator[Exported]:
    device = FaultyDevice(f"csi-faulty-{name}")
    volume_id = contract.volume_id_for_name(f"faulty-{name}")
    lio = Lio()
    try:
        lio.ensure_block(volume_id, device.path, contract.unit_serial(volume_id))
        lio.ensure_target(contract.target_iqn(volume_id), PORTALS, volume_id, chap=False)
        lio.grant(contract.target_iqn(volume_id), initiator_iqn)
        yield Exported(volume_id, device)
    finally:
        lio.delete_target(contract.target_iqn(volume_id))
        lio.delete_storage_object(volume_id)
        device.remove()


def node_plugin(stack: ExitStack, tmp_path: Path, *flags: str) -> Stubs:
    state = ROOT / "state"
    return stack.enter_context(running([*NODE_ARGS, "--state-dir", str(state), *flags], tmp_path / "n.sock",
                                       tmp_path / "node.log"))


def stage(node: Stubs, vol: Exported, cap: csi_pb2.VolumeCapability | None = None, timeout: float = 300) -> None:
    node.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(ROOT / "staging" / vol.volume_id),
        volume_capability=cap or mount_cap(), publish_context=vol.context()), timeout=timeout)


def unstage(node: Stubs, volume_id: str) -> None:
    node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(ROOT / "staging" / volume_id)), timeout=300)


@pytest.fixture
def no_multipathd() -> Iterator[None]:
    """A node without multipath (what --multipath=off is for): with multipathd running and
    find_multipaths no, it would build a map over the one path all the same."""
    sh("systemctl", "stop", "multipathd.socket", "multipathd.service")
    try:
        yield
    finally:
        sh("systemctl", "start", "multipathd.service")
        sh("udevadm", "settle")


def unmount_everything_under(root: Path) -> None:
    """Mounts a failed test left under root, deepest first (so that rm -rf can go on)."""
    targets = [m.target for m in MountTable().all() if m.target.startswith(str(root) + "/")]
    for target in sorted(set(targets), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


@pytest.fixture
def clean() -> Iterator[None]:
    unmount_everything_under(ROOT)
    subprocess.run(["rm", "-rf", str(ROOT)], check=False)
    ROOT.mkdir(parents=True, exist_ok=True)
    yield
    unmount_everything_under(ROOT)
    subprocess.run(["iscsiadm", "-m", "node", "-o", "delete"], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", str(ROOT)], check=False)


def stage_with_a_file(node: Stubs, vol: Exported) -> Path:
    """A first stage (mkfs on the blank volume), a file written, an unstage: a volume with data."""
    stage(node, vol)
    staging = ROOT / "staging" / vol.volume_id
    (staging / "precious").write_text("written before the fault\n")
    unstage(node, vol.volume_id)
    return staging


# Finding 1: reads that fail never format ------------------------------------------------------------

def test_reads_that_fail_while_writes_land_never_format_the_volume(clean: None, no_multipathd: None,
                                                                    tmp_path: Path, initiator_iqn: str) -> None:
    """One path (--multipath off), so a failed read reaches blkid at once, as it does on any node
    whose multipath gives up (no_path_retry fail) or has no multipath: blkid exits 2 printing nothing,
    and mkfs.ext4, whose writes still land, would have destroyed the filesystem."""
    with ExitStack() as stack:
        vol = stack.enter_context(exported("reads", initiator_iqn))
        node = node_plugin(stack, tmp_path, "--multipath", "off", "--device-timeout", "20")
        staging = stage_with_a_file(node, vol)
        vol.device.reads_failing()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stage(node, vol)
        print(f"stage with failing reads: {err.value.code().name} after {time.monotonic() - start:.1f} s: "
              f"{err.value.details()}")
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert leftovers(vol.volume_id, [str(staging)]) == []
        vol.device.healthy()
        stage(node, vol)
        assert (staging / "precious").read_text() == "written before the fault\n"
        unstage(node, vol.volume_id)
        assert leftovers(vol.volume_id, [str(staging)]) == []


def test_a_read_error_under_multipath_fails_the_stage_and_formats_nothing(clean: None, tmp_path: Path,
                                                                          initiator_iqn: str) -> None:
    """Under dm-multipath a failed read from LIO's backing store counts as a path error: the checker
    reinstates the path and the I/O is retried, so blkid hangs rather than failing. The stage gives up
    after --device-timeout (a non-final error: kubelet calls NodeUnstage or retries), formats nothing,
    and once the store is back the files are there and the unstage leaves nothing."""
    with ExitStack() as stack:
        vol = stack.enter_context(exported("eio", initiator_iqn))
        node = node_plugin(stack, tmp_path, "--device-timeout", "15", "--detach-timeout", "10")
        staging = stage_with_a_file(node, vol)
        vol.device.failing()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stage(node, vol)
        took = time.monotonic() - start
        print(f"stage with a failing store under multipath: {err.value.code().name} after {took:.1f} s: "
              f"{err.value.details()}")
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert took < 120
        vol.device.healthy()
        unstage_as_kubelet_does(node, vol.volume_id)  # after a non-final error, when the pod goes
        assert leftovers(vol.volume_id, [str(staging)]) == []
        stage(node, vol)
        assert (staging / "precious").read_text() == "written before the fault\n"
        unstage(node, vol.volume_id)
        assert leftovers(vol.volume_id, [str(staging)]) == []


def unstage_as_kubelet_does(node: Stubs, volume_id: str, within: float = 180) -> None:
    """NodeUnstage, retried while it fails, as kubelet retries it (queued I/O may take a while to drain)."""
    deadline = time.monotonic() + within
    while True:
        try:
            unstage(node, volume_id)
            return
        except grpc.RpcError as err:
            print(f"unstage: {err.code().name}: {err.details()}; retrying")
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


# Findings 2, 3, 13, 14 through both plugins ---------------------------------------------------------

def plugins(stack: ExitStack, tmp_path: Path, initiator_iqn: str, pool: str, *node_flags: str) -> Cluster:
    """A controller with one pool and a node plugin, both on ROOT's state directory."""
    state = ROOT / "state"
    controller = stack.enter_context(running(controller_args(state, [pool], tmp_path / "save.json"),
                                             tmp_path / "c.sock", tmp_path / "controller.log"))
    node = stack.enter_context(running([*NODE_ARGS, "--state-dir", str(state), *node_flags], tmp_path / "n.sock",
                                       tmp_path / "node.log"))
    return Cluster(controller, node, str(NodeId("testbed", initiator_iqn)), ROOT, tmp_path / "n.sock",
                   tmp_path / "node.log", state)


def fileio_pool() -> str:
    pool = ROOT / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    return f"name=default,type=fileio,path={pool}"


@pytest.fixture
def cluster(clean: None, tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    with ExitStack() as stack:
        yield plugins(stack, tmp_path, initiator_iqn, fileio_pool(), "--detach-timeout", "10")


def reboot_as_the_node_sees_it(volume_id: str) -> None:
    """What a reboot leaves of a staged volume: no mounts, map, devices or sessions; node records
    (node.startup=manual) and the driver's state file survive."""
    wwid, iqn = contract.wwid(volume_id), contract.target_iqn(volume_id)
    for line in sh("findmnt", "-rn", "-o", "TARGET,SOURCE").splitlines():
        target, _, source = line.partition(" ")
        if volume_id in target or wwid in source:
            sh("umount", target)
    sh("multipath", "-f", wwid, check=False)
    for dev in Path("/sys/block").glob("sd*"):
        wwid_file = dev / "device" / "wwid"
        if wwid_file.exists() and wwid_file.read_text().strip() == "naa." + wwid[1:]:
            (dev / "device" / "delete").write_text("1")
    sh("iscsiadm", "-m", "node", "-T", iqn, "--logout", check=False)


def test_a_block_volume_restaged_after_a_reboot_is_attached_again(cluster: Cluster) -> None:
    volume = cluster.create("pvc-reboot-block", cap=block_cap())
    _, target = cluster.attach(volume, block_cap())
    marker = os.urandom(4096)
    with open(target, "r+b") as dev:
        dev.write(marker)
        os.fsync(dev.fileno())
    cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id,
                                                                             target_path=target))
    reboot_as_the_node_sees_it(volume.volume_id)
    assert leftovers(volume.volume_id) != []  # the records and state file are there, nothing else
    _, target = cluster.attach(volume, block_cap())  # NodeStage must log in again, then NodePublish works
    with open(target, "rb") as dev:
        assert dev.read(4096) == marker
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id) == []


def test_a_recorded_sdx_that_names_another_lun_after_a_reboot_is_not_trusted(clean: None, no_multipathd: None,
                                                                           tmp_path: Path, initiator_iqn: str) -> None:
    """Without multipath the state file records /dev/sdX; after a reboot the kernel hands that name to
    whichever LUN logs in first. Re-staging the first volume must not bind the second's device."""
    state = ROOT / "state"
    with ExitStack() as stack:
        cluster = plugins(stack, tmp_path, initiator_iqn, fileio_pool(), "--multipath", "off")
        a = cluster.create("pvc-sdx-a", cap=block_cap())
        b = cluster.create("pvc-sdx-b", cap=block_cap())
        _, target_a = cluster.attach(a, block_cap())
        recorded = json.loads((state / "node" / "volumes" / f"{a.volume_id}.json").read_text())["device"]
        cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=a.volume_id,
                                                                                 target_path=target_a))
        reboot_as_the_node_sees_it(a.volume_id)
        _, target_b = cluster.attach(b, block_cap())  # b now has the sdX that a's state file names
        marker_b = os.urandom(4096)
        with open(target_b, "r+b") as dev:
            dev.write(marker_b)
            os.fsync(dev.fileno())
        _, target_a = cluster.attach(a, block_cap())
        with open(target_a, "r+b") as dev:
            dev.write(b"A" * 4096)  # meant for volume a
            os.fsync(dev.fileno())
        with open(target_b, "rb") as dev:
            assert dev.read(4096) == marker_b, "volume a's write landed on volume b"
        now_b = json.loads((state / "node" / "volumes" / f"{b.volume_id}.json").read_text())["device"]
        now_a = json.loads((state / "node" / "volumes" / f"{a.volume_id}.json").read_text())["device"]
        print(f"a was {recorded} before the reboot; after it b is {now_b} and a is {now_a}")
        for vol in (a, b):
            cluster.detach(vol)
            cluster.delete(vol)
            assert leftovers(vol.volume_id) == []


def test_a_busy_map_never_lets_a_publish_bind_the_empty_staging_directory(cluster: Cluster) -> None:
    volume = cluster.create("pvc-busy")
    staging, target = cluster.attach(volume)
    (Path(target) / "data").write_text("the volume's\n")
    cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id,
                                                                             target_path=target))
    device = f"/dev/mapper/{contract.wwid(volume.volume_id)}"
    holder = subprocess.Popen(["python3", "-c", f"import time; f = open({device!r}, 'rb'); print('held', flush=True); "
                                                "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(grpc.RpcError) as err:
            cluster.node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                volume_id=volume.volume_id, staging_target_path=staging), timeout=120)
        print(f"unstage with the map held open: {err.value.code().name}: {err.value.details()}")
        with pytest.raises(grpc.RpcError) as err:
            cluster.node.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=volume.volume_id, staging_target_path=staging, target_path=target,
                volume_capability=mount_cap()), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert not (Path(target) / "data").exists()
    finally:
        holder.kill()
        holder.wait()
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


def test_a_stage_that_fails_after_login_leaves_nothing_behind(cluster: Cluster) -> None:
    """ext4 on the volume, xfs asked for: FAILED_PRECONDITION, which kubelet never follows with a
    NodeUnstage. The sessions, the node records with their CHAP secret and the map must go with it."""
    secrets = {"chapUser": "stage-user", "chapPassword": "stage-password-77"}
    volume = cluster.create("pvc-fail-after-login", authentication="chap")
    staging, _ = cluster.attach(volume, secrets=secrets)
    cluster.detach(volume)
    with pytest.raises(grpc.RpcError) as err:
        cluster.attach(volume, mount_cap(fs_type="xfs"), secrets=secrets)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert leftovers(volume.volume_id, [staging]) == []
    secret_files = sh("grep", "-rl", "stage-password-77", "/etc/iscsi", check=False)
    assert secret_files == "", secret_files
    assert not (cluster.state / "node" / "volumes" / f"{volume.volume_id}.json").exists()
    cluster.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id, node_id=cluster.node_id))
    cluster.delete(volume)


def test_a_readonly_publish_cut_between_bind_and_remount_converges(cluster: Cluster) -> None:
    volume = cluster.create("pvc-ro")
    staging, target = cluster.attach(volume)
    cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id,
                                                                             target_path=target))
    Path(target).mkdir(parents=True, exist_ok=True)
    sh("mount", "--bind", staging, target)  # what a plugin killed before its read-only remount left
    cluster.node.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=staging, target_path=target,
        volume_capability=mount_cap(), readonly=True), timeout=60)
    options = sh("findmnt", "-n", "-o", "OPTIONS", "--mountpoint", target).split(",")
    assert "ro" in options
    with pytest.raises(OSError):
        (Path(target) / "write-me").write_text("no")
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


def test_a_failed_restage_of_a_mounted_volume_in_use_leaves_it_working(clean: None, no_multipathd: None,
                                                                       tmp_path: Path, initiator_iqn: str) -> None:
    """Kubelet stages again every volume it finds after a restart. If that happens while the target is
    unreachable, "already staged" is not proven (no logged-in session) and the stage runs again; when
    it then fails (here: another filesystem type asked for), its undo must not log out or delete the
    device a pod is using: once the target is back, so is the pod."""
    with ExitStack() as stack:
        cluster = plugins(stack, tmp_path, initiator_iqn, fileio_pool(), "--multipath", "off",
                          "--device-timeout", "20")
        volume = cluster.create("pvc-restage-in-use")
        staging, target = cluster.attach(volume)
        (Path(target) / "data").write_text("in use\n")
        sh("sync")
        iqn = contract.target_iqn(volume.volume_id)
        sh("nft", "add", "table", "inet", "csirestage")
        sh("nft", "add", "chain", "inet", "csirestage", "out", "{ type filter hook output priority 0 ; }")
        sh("nft", "add", "rule", "inet", "csirestage", "out", "tcp", "dport", "3260", "drop")
        try:
            deadline = time.monotonic() + 60
            while any(s.logged_in for s in Scsi().iscsi_sessions() if s.target_iqn == iqn):
                assert time.monotonic() < deadline, "the session never left LOGGED_IN"
                time.sleep(1)
            with pytest.raises(grpc.RpcError) as err:
                cluster.node.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
                    volume_id=volume.volume_id, staging_target_path=staging,
                    volume_capability=mount_cap(fs_type="xfs"),
                    publish_context={"targetIQN": iqn, "portals": ",".join(PORTALS), "lun": "0",
                                     "wwid": contract.wwid(volume.volume_id), "authentication": "none"},
                    volume_context=volume.volume_context), timeout=300)
            print(f"re-stage with the target unreachable: {err.value.code().name}: {err.value.details()}")
            assert [s for s in Scsi().iscsi_sessions() if s.target_iqn == iqn], "the re-stage logged the session out"
            assert any(m.target == target for m in MountTable().all()), "the pod's mount is gone"
        finally:
            sh("nft", "delete", "table", "inet", "csirestage", check=False)
        deadline = time.monotonic() + 90
        while not any(s.logged_in for s in Scsi().iscsi_sessions() if s.target_iqn == iqn):
            assert time.monotonic() < deadline, "the session did not come back"
            time.sleep(1)
        sh("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
        assert (Path(target) / "data").read_text() == "in use\n"
        cluster.attach(volume)  # stage and publish again: proven staged now, idempotent
        cluster.detach(volume)
        cluster.delete(volume)
        assert leftovers(volume.volume_id, [staging, target]) == []


def write_partition_table(device: str, partitions: list[tuple[int, int]]) -> None:
    """An MS-DOS partition table of (first sector, sectors) Linux partitions, as a VM image has one;
    closing the device after the write makes udev run kpartx over the map."""
    import struct

    sector = bytearray(512)
    for i, (first, count) in enumerate(partitions):
        sector[446 + 16 * i: 446 + 16 * (i + 1)] = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83,
                                                              b"\xfe\xff\xff", first, count)
    sector[510:512] = b"\x55\xaa"
    with open(device, "r+b") as dev:
        dev.write(bytes(sector))
        os.fsync(dev.fileno())


def test_a_block_volume_with_partitions_unstages_and_leaves_no_partition_maps(cluster: Cluster) -> None:
    """A VM disk on a block volume: a partition table makes kpartx map each partition on top of the
    volume's map. Those maps are the volume's own and unused once the pod is gone: unstage removes
    them with the map instead of refusing the volume as in use for ever."""
    volume = cluster.create("pvc-parts", cap=block_cap())
    staging, target = cluster.attach(volume, block_cap())
    wwid = contract.wwid(volume.volume_id)
    write_partition_table(target, [(2048, 65536), (67584, 128 * MiB // 512 - 67584)])
    # udev's kpartx rule maps the partitions on a change event of the map (what a distribution does
    # depends on its rules); kpartx by hand if the rules here do not.
    sh("udevadm", "trigger", "--action=change", "--settle", f"/dev/mapper/{wwid}", check=False)
    if len(list(Path("/dev/mapper").glob(f"{wwid}?*"))) < 2:
        sh("kpartx", "-a", "-p", "-part", f"/dev/mapper/{wwid}")
        sh("udevadm", "settle")
    maps = sorted(p.name for p in Path("/dev/mapper").glob(f"{wwid}?*"))
    print(f"partition maps: {maps}")
    assert len(maps) == 2
    cluster.detach(volume)
    assert list(Path("/dev/mapper").glob(f"{wwid}*")) == []
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


# Failing blocks under a volume in use ---------------------------------------------------------------

@contextmanager
def failing_lv(vg: str, volume_id: str) -> Iterator[None]:
    """The thin LV of a volume answers every I/O with an error, then gets its own table back."""
    name = f"{vg}-{volume_id.replace('-', '--')}"
    table = sh("dmsetup", "table", name).strip()
    sectors = table.split()[1]
    for table_now in (f"0 {sectors} error",):
        sh("dmsetup", "suspend", name)
        sh("dmsetup", "load", name, "--table", table_now)
        sh("dmsetup", "resume", name)
    try:
        yield
    finally:
        sh("dmsetup", "suspend", name)
        sh("dmsetup", "load", name, "--table", table)
        sh("dmsetup", "resume", name)


def paths_states(wwid: str) -> list[str]:
    out = sh("multipathd", "show", "paths", "raw", "format", "%w %d %t %T", check=False)
    return [" ".join(line.split()[2:4]) for line in out.splitlines() if line.startswith(wwid)]


@pytest.fixture
def thin_cluster(clean: None, tmp_path: Path, initiator_iqn: str, thin_vg: str) -> Iterator[Cluster]:
    with ExitStack() as stack:
        yield plugins(stack, tmp_path, initiator_iqn, f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin",
                      "--detach-timeout", "30")


def test_failing_blocks_hold_io_like_a_dead_path_and_it_resumes_intact(thin_cluster: Cluster, thin_vg: str) -> None:
    cluster = thin_cluster
    volume = cluster.create("pvc-failing-blocks", 64 * MiB, cap=block_cap())
    _, target = cluster.attach(volume, block_cap())
    wwid = contract.wwid(volume.volume_id)
    data = os.urandom(MiB)
    with open(target, "r+b") as dev:
        dev.write(data)
        os.fsync(dev.fileno())
    sh("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
    with failing_lv(thin_vg, volume.volume_id):
        reader = subprocess.Popen(["dd", f"if={target}", "of=/dev/null", "bs=1M", "count=1", "iflag=direct"],
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(15)
        held = reader.poll() is None
        states = paths_states(wwid)
        print(f"with the store failing for 15 s: reader {'waiting' if held else f'ended {reader.returncode}'}, "
              f"paths {states}")
    _, err = reader.communicate(timeout=120)
    print(f"after the store came back the reader ended with {reader.returncode}: {err.strip()}")
    assert held, "a read failed outright instead of waiting for the store like a dead path"
    assert reader.returncode == 0
    with open(target, "rb") as dev:
        assert dev.read(MiB) == data
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id) == []


def test_fencing_works_while_the_backing_store_fails(thin_cluster: Cluster, thin_vg: str) -> None:
    cluster = thin_cluster
    volume = cluster.create("pvc-fence-failing", 64 * MiB, cap=block_cap())
    staging, target = cluster.attach(volume, block_cap())
    iqn = contract.target_iqn(volume.volume_id)
    with failing_lv(thin_vg, volume.volume_id):
        # Through the map, not the pod's bind mount (kubelet unpublishes only once the pod's processes
        # are gone): a holder outside the pod, as udev's blkid can be, that the unstage must outlast.
        writer = subprocess.Popen(["dd", "if=/dev/zero", f"of=/dev/mapper/{contract.wwid(volume.volume_id)}",
                                   "bs=64k", "count=16", "oflag=direct"], stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        start = time.monotonic()
        cluster.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume.volume_id, node_id=cluster.node_id), timeout=60)
        fenced = time.monotonic() - start
        acls = list(Path(f"/sys/kernel/config/target/iscsi/{iqn}/tpgt_1/acls").iterdir())
        assert acls == []
        time.sleep(10)  # past the replacement timeout: the sessions are gone, the map queues
        logged_in = [s for s in Scsi().iscsi_sessions() if s.target_iqn == iqn and s.logged_in]
        assert logged_in == [], f"a fenced node is still logged in: {logged_in}"
        # The fenced node's write has not succeeded: it waits in the map's queue (up to the queueing
        # bound, minutes), and the unstage that follows the fence fails it within --detach-timeout.
        assert writer.poll() is None or writer.returncode != 0
        start = time.monotonic()
        cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume.volume_id, target_path=target), timeout=120)
        cluster.node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging), timeout=300)
        unstaged = time.monotonic() - start
        _, err = writer.communicate(timeout=60)
        print(f"ControllerUnpublish with the store failing took {fenced:.1f} s; the unstage after it "
              f"{unstaged:.1f} s (--detach-timeout 30); the writer ended with {writer.returncode}: "
              f"{err.strip()[-200:]}")
        assert writer.returncode != 0
        assert unstaged < 30 + 5
    assert leftovers(volume.volume_id, [staging, target]) == []
    cluster.delete(volume)


# The runner and a process in D state ------------------------------------------------------------------

def test_a_command_stuck_in_uninterruptible_io_does_not_hold_the_call(clean: None) -> None:
    device = FaultyDevice("csi-stuck")
    try:
        sh("dmsetup", "suspend", device.name)  # I/O to a suspended map waits in D state; SIGKILL waits too
        start = time.monotonic()
        with pytest.raises(CommandTimedOut) as err:
            SubprocessRunner().run(["dd", f"if={device.path}", "of=/dev/null", "bs=4k", "count=1", "iflag=direct"],
                                   timeout=2)
        took = time.monotonic() - start
        print(f"a read of a suspended map: {err.value} after {took:.1f} s")
        assert took < 2 + SubprocessRunner.KILL_GRACE + 3
        assert "did not exit after SIGKILL" in str(err.value)
    finally:
        sh("dmsetup", "resume", device.name)
        time.sleep(1)
        device.remove()
