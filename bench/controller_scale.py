"""Create+Publish latency as the number of existing volumes grows (10, 100, 500 by default), and
the time of a whole ListVolumes (each entry with its condition checked in live LIO) and of a
100-entry page at each level.

Run in the testbed (it drives a real controller over its socket, on real LIO):
    testbed/run -- python bench/controller_scale.py [--levels 10,100,500] [--samples 10]
Prints a table and a JSON line; no timed asserts. The target: time at 500 within 1.5x of the time at 10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csi_iscsi.csi import csi_pb2
from tests.testbed.plugins import MiB, controller_args, mount_cap, running

NODE = "bench-node/iqn.2026-11.io.csi-iscsi:bench"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--levels", default="10,100,500")
    p.add_argument("--samples", type=int, default=10)
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ctrl-", dir="/var/tmp"))
    pool = work / "pool"
    pool.mkdir()
    results = []
    with running(controller_args(work / "state", [f"name=default,type=fileio,path={pool}"], work / "save.json"),
                 work / "c.sock", work / "controller.log") as plugin:
        ctl = plugin.controller
        present = 0

        def create_publish(name: str) -> tuple[str, float, float]:
            t0 = time.perf_counter()
            vid = ctl.CreateVolume(csi_pb2.CreateVolumeRequest(
                name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=4 * MiB),
                volume_capabilities=[mount_cap()]), timeout=120).volume.volume_id
            t1 = time.perf_counter()
            ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                volume_id=vid, node_id=NODE, volume_capability=mount_cap()), timeout=120)
            return vid, t1 - t0, time.perf_counter() - t1

        for level in levels:
            fill_start = time.perf_counter()
            while present < level:
                create_publish(f"fill-{present}")
                present += 1
            fill = time.perf_counter() - fill_start
            creates, publishes, totals = [], [], []
            for i in range(args.samples):
                vid, c, pub = create_publish(f"sample-{level}-{i}")
                creates.append(c)
                publishes.append(pub)
                totals.append(c + pub)
                ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE))
                ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
            t0 = time.perf_counter()
            listed = ctl.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=600).entries
            list_all = time.perf_counter() - t0
            abnormal = sum(e.status.volume_condition.abnormal for e in listed)
            t0 = time.perf_counter()
            ctl.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=100), timeout=600)
            page = time.perf_counter() - t0
            results.append({"volumes": level, "create_ms": statistics.median(creates) * 1000,
                            "publish_ms": statistics.median(publishes) * 1000,
                            "create_publish_ms": statistics.median(totals) * 1000, "fill_s": fill,
                            "list_all_s": list_all, "list_page100_s": page, "abnormal": abnormal})
            print(f"  {level} volumes present (filled in {fill:.1f} s)", flush=True)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    base = results[0]["create_publish_ms"]
    print(f"\nCreate+Publish, medians of {args.samples} (real LIO in the testbed VM, TCG)")
    print(f"{'volumes':>8} {'create ms':>10} {'publish ms':>11} {'total ms':>9} {'vs first':>9} "
          f"{'list all s':>11} {'page 100 s':>11} {'abnormal':>9}")
    for r in results:
        r["ratio"] = r["create_publish_ms"] / base
        print(f"{r['volumes']:>8} {r['create_ms']:>10.1f} {r['publish_ms']:>11.1f} {r['create_publish_ms']:>9.1f} "
              f"{r['ratio']:>8.2f}x {r['list_all_s']:>11.2f} {r['list_page100_s']:>11.2f} {r['abnormal']:>9}")
    print(json.dumps({"benchmark": "controller_scale", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
