"""The target node goes away and comes back, as in maintenance or a reboot: LIO is cleared and
restored by its own boot service (rtslib-fb-targetctl: stop clears configfs, start restores the
saved config the controller keeps). With the driver's multipath drop-in (queueing 180 s with every
path down) a 120 s outage under fio verify costs the application a pause and no I/O error; a
target that stays dead still lets an unstage finish within --detach-timeout, and the queueing
bound an application sees is measured."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from csi_iscsi import contract
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2

from .conftest import leftovers, scrub_iscsi_and_lio
from .plugins import PORTALS, MiB, block_cap, controller_args, running
from .test_node import NODE_ARGS, Cluster

SAVEFILE = Path("/etc/rtslib-fb-target/saveconfig.json")
SERVICE = "rtslib-fb-targetctl.service"
ROOT = Path("/var/tmp/csi-maintenance")
OUTAGE = 120.0
DETACH_TIMEOUT = 60


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def target_down() -> None:
    sh("systemctl", "stop", SERVICE)


def target_up() -> None:
    sh("systemctl", "start", SERVICE)


def lio_has(iqn: str) -> bool:
    return Path(f"/sys/kernel/config/target/iscsi/{iqn}").exists()


def snapshot(when: str, wwid: str) -> None:
    """What the node sees of the map and its sessions, for the test's output."""
    maps = sh("multipathd", "show", "maps", "raw", "format", "%n %Q %N %t %x", check=False)
    paths = sh("multipathd", "show", "paths", "raw", "format", "%w %d %t %T %o", check=False)
    sessions = sh("iscsiadm", "-m", "session", "-P", "1", check=False)
    states = [line.strip() for line in sessions.splitlines() if "Session State" in line or "Connection State" in line]
    kernel = sh("dmesg", check=False).splitlines()[-6:]
    print(f"[{when}] map: {[m for m in maps.splitlines() if m.startswith(wwid)]} paths: "
          f"{[p for p in paths.splitlines() if p.startswith(wwid)]} sessions: {states}\n  kernel: {kernel}")


def wait_for_paths(wwid: str, want: int, within: float) -> float:
    """Seconds until multipathd shows want paths of the map active and ready."""
    start = time.monotonic()
    while True:
        out = sh("multipathd", "show", "paths", "raw", "format", "%w %t %T", check=False)
        up = [line for line in out.splitlines() if line.split()[:3] == [wwid, "active", "ready"]]
        if len(up) >= want:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"paths of {wwid} did not come back: {out}"
        time.sleep(1)


@pytest.fixture
def maintained(tmp_path: Path, initiator_iqn: str) -> Iterator[Cluster]:
    saved = SAVEFILE.read_bytes() if SAVEFILE.exists() else None
    subprocess.run(["rm", "-rf", str(ROOT)], check=False)
    pool = ROOT / "pool"
    pool.mkdir(parents=True)
    state = ROOT / "state"
    target_up()  # a no-op when it runs: what the node's boot did
    try:
        with ExitStack() as stack:
            controller = stack.enter_context(running(
                controller_args(state, [f"name=default,type=fileio,path={pool}"], SAVEFILE),
                tmp_path / "c.sock", tmp_path / "controller.log"))
            node = stack.enter_context(running(
                [*NODE_ARGS, "--state-dir", str(state), "--detach-timeout", str(DETACH_TIMEOUT)],
                tmp_path / "n.sock", tmp_path / "node.log"))
            yield Cluster(controller, node, str(NodeId("testbed", initiator_iqn)), ROOT, tmp_path / "n.sock",
                          tmp_path / "node.log", state)
    finally:
        target_up()
        for line in sh("findmnt", "-rn", "-o", "TARGET").splitlines():
            if line.startswith(str(ROOT)):
                subprocess.run(["umount", "-l", line], check=False)
        scrub_iscsi_and_lio(pool_dirs=(pool,))
        subprocess.run(["rm", "-rf", str(ROOT)], check=False)
        if saved is None:
            SAVEFILE.unlink(missing_ok=True)
        else:
            SAVEFILE.write_bytes(saved)


def test_a_120_s_target_restart_under_fio_verify_is_a_pause_not_an_error(maintained: Cluster) -> None:
    cluster = maintained
    volume = cluster.create("pvc-maintenance", 256 * MiB)
    iqn, wwid = contract.target_iqn(volume.volume_id), volume.volume_context["wwid"]
    staging, target = cluster.attach(volume)
    before = os.urandom(4 * MiB)
    (Path(target) / "before").write_bytes(before)
    sh("sync")
    runtime = int(OUTAGE + 60)
    fio = subprocess.Popen(
        ["fio", "--name=maintenance", f"--filename={target}/fio.dat", "--size=32M", "--rw=write", "--bs=64k",
         "--ioengine=psync", "--direct=1", "--verify=crc32c", "--verify_backlog=16", "--verify_fatal=1",
         "--time_based", f"--runtime={runtime}", "--output-format=json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _outage_under_fio(fio, iqn, wwid, staging, target, before, runtime)
    finally:
        if fio.poll() is None:  # a failed step must not leave fio writing into the next test's teardown
            fio.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # held in queued I/O until the target is back
                fio.wait(60)
    cluster.detach(volume)
    cluster.delete(volume)
    assert leftovers(volume.volume_id, [staging, target]) == []


def _outage_under_fio(fio: subprocess.Popen[str], iqn: str, wwid: str, staging: str, target: str, before: bytes,
                      runtime: int) -> None:
    time.sleep(10)
    assert fio.poll() is None, fio.communicate()
    kernel_lines = len(sh("dmesg").splitlines())
    down_at = time.monotonic()
    target_down()
    assert not lio_has(iqn), "stopping the target service did not clear LIO"
    print(f"target cleared by `systemctl stop {SERVICE}`; down for {OUTAGE:g} s")
    for at in (5, 30, 60, 90, 115):
        time.sleep(max(0.0, at - (time.monotonic() - down_at)))
        snapshot(f"down {at} s", wwid)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    target_up()
    print(f"target restored by `systemctl start {SERVICE}` after {time.monotonic() - down_at:.1f} s")
    assert lio_has(iqn), "the boot service did not restore the volume's target"
    back = wait_for_paths(wwid, len(PORTALS), within=120)
    print(f"both paths active and ready {back:.1f} s after the restore")
    out, err = fio.communicate(timeout=runtime + 180)
    assert fio.returncode == 0, f"fio failed ({fio.returncode}): {err[-2000:]} {out[-2000:]}"
    job = json.loads(out[out.index("{"):])["jobs"][0]
    write, read = job["write"], job["read"]
    longest = max(write["clat_ns"]["max"], read["clat_ns"]["max"]) / 1e9
    print(f"fio: error={job['error']}, {write['io_bytes'] / MiB:.0f} MiB written and {read['io_bytes'] / MiB:.0f} MiB "
          f"read back and verified in {runtime} s; longest write {write['clat_ns']['max'] / 1e9:.1f} s, longest "
          f"verify read {read['clat_ns']['max'] / 1e9:.1f} s")
    assert job["error"] == 0
    assert longest >= OUTAGE * 0.9, "no I/O waited through the outage: was it real?"
    options = sh("findmnt", "-n", "-o", "OPTIONS", staging).strip()
    assert options.split(",")[0] == "rw", f"the filesystem went {options}"
    sh("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
    assert (Path(target) / "before").read_bytes() == before
    # The paths' own errors ("I/O error, dev sdX", "Failing path") are how multipath sees the outage;
    # none may reach the map or the filesystem.
    dm = Path(os.path.realpath(f"/dev/mapper/{wwid}")).name
    errors = [line for line in sh("dmesg").splitlines()[kernel_lines:]
              if (f"dev {dm}," in line and "I/O error" in line) or "Buffer I/O error" in line
              or "EXT4-fs error" in line or "EXT4-fs warning" in line]
    assert errors == [], errors[-10:]


def test_a_dead_target_bounds_unstage_by_the_detach_timeout_and_io_by_the_queueing(maintained: Cluster) -> None:
    """Two volumes when the target dies for good: the one being unstaged (dirty data in its page
    cache, so umount waits on the queue) finishes within --detach-timeout, its queued writes failed
    after half of it; the one a pod keeps writing to rides out 120 s and gets its first I/O error
    when multipath's queueing runs out: the bound the closing note quotes."""
    cluster = maintained
    kept = cluster.create("pvc-dead-kept", 64 * MiB, cap=block_cap())
    left = cluster.create("pvc-dead-left", 64 * MiB)
    _, kept_dev = cluster.attach(kept, block_cap())
    left_staging, left_target = cluster.attach(left)
    # Written just before the target goes: still only in the page cache (writeback waits ~30 s), so
    # umount has to write it back into a map with no path.
    (Path(left_target) / "dirty").write_bytes(os.urandom(4 * MiB))
    target_down()
    down_at = time.monotonic()
    writer = subprocess.Popen(["dd", "if=/dev/zero", f"of={kept_dev}", "bs=4k", "count=1", "oflag=direct",
                               "conv=notrunc"], stderr=subprocess.PIPE, text=True)
    dirty = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("Dirty:")))
    print(f"target down; {dirty} kB dirty in the page cache")
    started = time.monotonic()
    cluster.node.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=left.volume_id, target_path=left_target), timeout=60)
    cluster.node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=left.volume_id, staging_target_path=left_staging), timeout=DETACH_TIMEOUT + 60)
    took = time.monotonic() - started
    print(f"unstage with the target dead and dirty data: {took:.1f} s (--detach-timeout {DETACH_TIMEOUT})")
    snapshot("after the unstage", kept.volume_context["wwid"])
    assert took < DETACH_TIMEOUT + 5
    assert leftovers(left.volume_id, [left_staging, left_target]) == []
    assert "queueing stopped" in cluster.node_log.read_text()
    _, err = writer.communicate(timeout=400)
    failed_after = time.monotonic() - down_at
    print(f"a pod's direct write with every path down failed after {failed_after:.1f} s: {err.strip()[-200:]}")
    assert writer.returncode != 0
    assert failed_after > OUTAGE, "the queueing did not ride out a 120 s outage"
    assert failed_after < 5 + 180 + 60  # replacement timeout + no_path_retry 36 x 5 s + TCG slack
    target_up()
    back = wait_for_paths(kept.volume_context["wwid"], len(PORTALS), within=120)
    print(f"paths back {back:.1f} s after the target; the map serves again")
    sh("dd", "if=/dev/zero", f"of={kept_dev}", "bs=4k", "count=1", "oflag=direct", "conv=notrunc")
    cluster.detach(kept)
    cluster.controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=left.volume_id, node_id=cluster.node_id), timeout=60)
    cluster.delete(kept)
    cluster.delete(left)
    assert leftovers(kept.volume_id) == []
