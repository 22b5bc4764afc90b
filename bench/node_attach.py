"""Attach and detach through the node plugin against the same steps by hand, in the same VM run.

Attach = NodeStage + NodePublish of a fresh 1 GiB volume (2 portals, multipath, mkfs.ext4, mount);
detach = NodeUnpublish + NodeUnstage. The floor does by hand what an admin would: SendTargets
discovery, login on both portals, wait for the multipath map, mkfs.ext4, mount; then umount,
multipath -f, logout, delete the node records. Samples alternate between the two. Then 20 volumes
are staged concurrently on the node and the total time is printed.

    testbed/run -- python bench/node_attach.py [--samples 10]
Prints a table and a JSON line; no timed asserts. Target: the driver within 1.3x of the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2
from tests.testbed.plugins import PORTALS, GiB, MiB, controller_args, mount_cap, running


def sh(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    rc = subprocess.run(argv, capture_output=True).returncode
    if rc not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {rc}")


def wait_map(wwid: str, paths: int = 2, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dm = Path(f"/dev/mapper/{wwid}")
        if dm.exists():
            slaves = Path(f"/sys/block/{os.path.basename(os.path.realpath(dm))}/slaves")
            if slaves.exists() and len(os.listdir(slaves)) >= paths:
                return
        time.sleep(0.01)
    raise RuntimeError(f"no map {wwid}")


def by_hand(iqn: str, wwid: str, mnt: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    sh("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", PORTALS[0])
    sh("iscsiadm", "-m", "node", "-T", iqn, "--login")
    wait_map(wwid)
    sh("mkfs.ext4", "-q", f"/dev/mapper/{wwid}")
    mnt.mkdir(parents=True, exist_ok=True)
    sh("mount", f"/dev/mapper/{wwid}", str(mnt))
    t1 = time.perf_counter()
    sh("umount", str(mnt))
    sh("multipath", "-f", wwid)
    sh("iscsiadm", "-m", "node", "-T", iqn, "--logout")
    sh("iscsiadm", "-m", "node", "-T", iqn, "-o", "delete")
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--concurrent", type=int, default=20)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-node-", dir="/var/tmp"))
    cap = mount_cap()
    floor_a, floor_d, drv_a, drv_d = [], [], [], []
    node_args = ["node", "--node-name", "bench", "--state-dir", str(work / "state")]
    with running(controller_args(work / "state", [f"name=default,type=fileio,path={work / 'pool'}"],
                                 work / "save.json"), work / "c.sock", work / "controller.log") as controller, \
            running(node_args, work / "n.sock", work / "node.log") as node:
        ctl, nd = controller.controller, node.node
        node_id = nd.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id

        def volume(name: str, size: int = GiB) -> tuple[str, dict[str, str], dict[str, str]]:
            v = ctl.CreateVolume(csi_pb2.CreateVolumeRequest(
                name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                volume_capabilities=[cap])).volume
            pctx = ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                volume_id=v.volume_id, node_id=node_id, volume_capability=cap)).publish_context
            return v.volume_id, dict(pctx), dict(v.volume_context)

        def drop(vid: str) -> None:
            ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id))
            ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))

        def stage(vid: str, pctx: dict[str, str], vctx: dict[str, str]) -> None:
            nd.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
                volume_id=vid, staging_target_path=str(work / "stage" / vid), volume_capability=cap,
                publish_context=pctx, volume_context=vctx), timeout=900)
            nd.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=str(work / "stage" / vid),
                target_path=str(work / "pods" / vid), volume_capability=cap, publish_context=pctx), timeout=300)

        def unstage(vid: str) -> None:
            nd.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid,
                                                                     target_path=str(work / "pods" / vid)))
            nd.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=vid,
                                                                 staging_target_path=str(work / "stage" / vid)))

        for i in range(args.samples):
            vid, _, _ = volume(f"floor-{i}")
            a, d = by_hand(contract.target_iqn(vid), contract.wwid(vid), work / "hand")
            floor_a.append(a)
            floor_d.append(d)
            drop(vid)
            vid, pctx, vctx = volume(f"driver-{i}")
            t0 = time.perf_counter()
            stage(vid, pctx, vctx)
            t1 = time.perf_counter()
            unstage(vid)
            drv_a.append(t1 - t0)
            drv_d.append(time.perf_counter() - t1)
            drop(vid)
            print(f"  sample {i + 1}: by hand {a:.2f}/{d:.2f} s, driver {t1 - t0:.2f}/{drv_d[-1]:.2f} s", flush=True)

        many = [volume(f"many-{i}", 64 * MiB) for i in range(args.concurrent)]
        errors: list[str] = []

        def one(v: tuple[str, dict[str, str], dict[str, str]]) -> None:
            try:
                stage(*v)
            except Exception as exc:  # counted and printed below
                errors.append(f"{v[0]}: {exc}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(v,)) for v in many]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent_s = time.perf_counter() - t0
        for vid, _, _ in many:
            unstage(vid)
            drop(vid)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    m = statistics.median
    rows = [("attach", m(floor_a), m(drv_a)), ("detach", m(floor_d), m(drv_d))]
    print(f"\nmedians of {args.samples} (TCG VM; TESTBED.md's floor: attach 4.97 s, detach 1.20 s)")
    print(f"{'':8} {'by hand s':>10} {'driver s':>9} {'ratio':>6}")
    for name, floor, drv in rows:
        print(f"{name:8} {floor:>10.2f} {drv:>9.2f} {drv / floor:>6.2f}")
    print(f"{args.concurrent} volumes staged concurrently: {concurrent_s:.1f} s, {len(errors)} errors")
    for e in errors:
        print("  " + e)
    print(json.dumps({"benchmark": "node_attach", "samples": args.samples,
                      "floor": {"attach_s": m(floor_a), "detach_s": m(floor_d)},
                      "driver": {"attach_s": m(drv_a), "detach_s": m(drv_d)},
                      "ratio": {"attach": m(drv_a) / m(floor_a), "detach": m(drv_d) / m(floor_d)},
                      "concurrent": {"volumes": args.concurrent, "seconds": concurrent_s, "errors": len(errors)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
