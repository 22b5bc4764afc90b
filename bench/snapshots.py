"""Snapshot, restore and clone times for 1 GiB and 8 GiB volumes on each kind of pool.

Run in the testbed (a real controller over its socket; real LVM, ext4 and XFS):
    testbed/run -- python bench/snapshots.py [--sizes 1,8] [--fill 0.5]
    testbed/run --memory 16000 -- python bench/snapshots.py --fill 0.25 --tmpfs 12g   # 8 GiB in tmpfs
Pools: lvm-thin (thin snapshots), fileio on ext4 (a sparse copy of the data extents) and fileio on
XFS with reflink=1 (a reflink). Each volume is first written with random data over `--fill` of
its size, so a copy has that much to move. Prints a table and a JSON line; no timed asserts. Under
TCG the copies' absolute times are slow: compare pools and sizes within one run, and read the
per-GiB cost of a sparse copy as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csi_iscsi.csi import csi_pb2
from tests.testbed.plugins import MiB, controller_args, mount_cap, running

GiB = 1024 * MiB


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextmanager
def lvm_pool(work: Path, gib: int) -> Iterator[tuple[str, Callable[[str], str]]]:
    image = work / "thin.img"
    image.unlink(missing_ok=True)
    sh("truncate", "-s", f"{gib}G", str(image))
    loop = sh("losetup", "--find", "--show", str(image)).strip()
    vg = "benchsnap"
    try:
        sh("pvcreate", "-q", loop)
        sh("vgcreate", "-q", vg, loop)
        sh("lvcreate", "-q", "-y", "-l", "95%VG", "-T", f"{vg}/thin")
        yield f"name=p,type=lvm-thin,vg={vg},thinpool=thin,overprovision=4", lambda item: f"/dev/{vg}/{item}"
    finally:
        subprocess.run(["vgremove", "-q", "-f", vg], capture_output=True)
        subprocess.run(["pvremove", "-q", "-f", loop], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        image.unlink(missing_ok=True)


@contextmanager
def file_pool(work: Path, gib: int, fs: str) -> Iterator[tuple[str, Callable[[str], str]]]:
    image, mnt = work / f"{fs}.img", work / f"{fs}-mnt"
    image.unlink(missing_ok=True)
    sh("truncate", "-s", f"{gib}G", str(image))
    if fs == "xfs":
        sh("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
    else:
        sh("mkfs.ext4", "-q", "-F", str(image))
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", "loop", str(image), str(mnt))
    pool = mnt / "pool"
    pool.mkdir()
    try:
        yield f"name=p,type=fileio,path={pool},overprovision=4", lambda item: str(pool / f"{item}.img")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(path: str, size: int, fraction: float) -> None:
    count = max(1, int(size * fraction) // (4 * MiB))
    sh("dd", "if=/dev/urandom", f"of={path}", "bs=4M", f"count={count}", "conv=notrunc,fsync", "status=none")


def measure(spec: str, backing: Callable[[str], str], size: int, fraction: float, work: Path,
            label: str) -> dict[str, object]:
    with running(controller_args(work / f"state-{label}", [spec], work / f"save-{label}.json"),
                 work / f"c-{label}.sock", work / f"c-{label}.log") as plugin:
        ctl = plugin.controller
        vid = ctl.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=f"src-{label}", capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[mount_cap()], parameters={"pool": "p"}), timeout=120).volume.volume_id
        fill(backing(vid), size, fraction)
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)

        t0 = time.perf_counter()
        request = csi_pb2.CreateSnapshotRequest(name=f"snap-{label}", source_volume_id=vid)
        while not (snap := ctl.CreateSnapshot(request, timeout=600).snapshot).ready_to_use:
            time.sleep(0.2)
        snapshot_s = time.perf_counter() - t0

        def make(name: str, source: csi_pb2.VolumeContentSource) -> float:
            start = time.perf_counter()
            request = csi_pb2.CreateVolumeRequest(
                name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                volume_capabilities=[mount_cap()], parameters={"pool": "p"}, volume_content_source=source)
            while True:
                try:
                    ctl.CreateVolume(request, timeout=600)
                    return time.perf_counter() - start
                except Exception as exc:  # ABORTED while the copy runs: the provisioner's retry
                    if "ABORTED" not in str(exc):
                        raise
                    time.sleep(0.2)

        restore_s = make(f"restore-{label}", csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)))
        clone_s = make(f"clone-{label}", csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=vid)))
        volumes = [v.volume.volume_id for v in ctl.ListVolumes(csi_pb2.ListVolumesRequest()).entries]
        ctl.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=120)
        for v in volumes:
            ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=v), timeout=120)
    data_gib = int(size * fraction) // (4 * MiB) * 4 * MiB / GiB
    return {"pool": label.rsplit("-", 1)[0], "size_gib": size // GiB, "data_gib": round(data_gib, 2),
            "snapshot_s": round(snapshot_s, 2), "restore_s": round(restore_s, 2), "clone_s": round(clone_s, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1,8", help="volume sizes in GiB")
    p.add_argument("--fill", type=float, default=0.5, help="fraction of each volume written before the snapshot")
    p.add_argument("--tmpfs", default="", help="a tmpfs of this size (e.g. 12g) for the pools, where the VM's "
                   "own disk is too small for the copies (start the VM with more --memory)")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-snap-", dir="/var/tmp"))
    if args.tmpfs:
        sh("mount", "-t", "tmpfs", "-o", f"size={args.tmpfs}", "tmpfs", str(work))
    pool_gib = 4 * max(sizes) + 4  # the source, its snapshot, a restore and a clone, with room
    results = []
    for kind in ("lvm-thin", "fileio-ext4", "fileio-xfs-reflink"):
        for size in sizes:
            label = f"{kind}-{size}"
            if kind == "lvm-thin":
                pool = lvm_pool(work, pool_gib)
            else:
                pool = file_pool(work, pool_gib, "xfs" if "xfs" in kind else "ext4")
            with pool as (spec, backing):
                results.append(measure(spec, backing, size * GiB, args.fill, work, label))
            print(results[-1], flush=True)
    print(f"{'pool':<20} {'size GiB':>8} {'data GiB':>8} {'snapshot s':>10} {'restore s':>9} {'clone s':>8}")
    for r in results:
        print(f"{r['pool']:<20} {r['size_gib']:>8} {r['data_gib']:>8} {r['snapshot_s']:>10} {r['restore_s']:>9} "
              f"{r['clone_s']:>8}")
    print(json.dumps({"bench": "snapshots", "fill": args.fill, "tmpfs": args.tmpfs or None, "results": results}))
    if args.tmpfs:
        subprocess.run(["umount", str(work)], check=False)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
