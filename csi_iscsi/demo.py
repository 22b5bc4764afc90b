"""The main job end to end on the embedded default (the testbed VM as target and node), through
the plugins' gRPC services: the controller carves a volume and grants this node, the node stages
it over two paths into one multipath map (mkfs on first use), publishes it into a "pod" path,
data is written and read back across an unstage/stage cycle, then everything is taken down,
with the time of every call printed.

Run inside the testbed: scripts/demo (or testbed/run -- python -m csi_iscsi.demo).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc

from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc

T = TypeVar("T")
MiB = 1024 * 1024


@contextmanager
def serving(mode: str, sock: Path, args: list[str], log: Path) -> Iterator[grpc.Channel]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "csi_iscsi", mode, "--endpoint", f"unix://{sock}", *args],
                                stdout=out, stderr=out)
        channel = grpc.insecure_channel(f"unix:{sock}")
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
            yield channel
        finally:
            channel.close()
            proc.terminate()
            proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--portal", action="append", default=[])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--data-mib", type=int, default=32)
    args = p.parse_args(argv)
    portals = args.portal or ["127.0.0.11:3260", "127.0.0.12:3260"]
    work = Path(tempfile.mkdtemp(prefix="csi-iscsi-demo-", dir="/var/tmp"))
    times: dict[str, float] = {}
    runner = SubprocessRunner()

    def timed(name: str, call: Callable[[], T]) -> T:
        start = time.monotonic()
        result = call()
        times[name] = time.monotonic() - start
        print(f"  {name:<28} {times[name]:6.2f} s", flush=True)
        return result

    controller_args = ["--state-dir", str(work / "state"), "--saveconfig", str(work / "saveconfig.json"),
                       "--pool", f"name=default,type=fileio,path={work / 'pool'}"]
    for portal in portals:
        controller_args += ["--portal", portal]
    node_args = ["--state-dir", str(work / "state"), "--node-name", os.uname().nodename.lower()]
    print(f"controller and node plugins logging to {work}/*.log")
    with serving("controller", work / "controller.sock", controller_args, work / "controller.log") as c_chan, \
            serving("node", work / "node.sock", node_args, work / "node.log") as n_chan:
        ctl = csi_pb2_grpc.ControllerStub(c_chan)  # type: ignore[no-untyped-call]
        node = csi_pb2_grpc.NodeStub(n_chan)  # type: ignore[no-untyped-call]
        node_id = node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id
        cap = csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
        volume = timed("CreateVolume", lambda: ctl.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=f"demo-{os.getpid()}", volume_capabilities=[cap],
            capacity_range=csi_pb2.CapacityRange(required_bytes=args.size_mib * MiB))).volume)
        vid = volume.volume_id
        print(f"    volume {vid}, {volume.capacity_bytes // MiB} MiB, portals {volume.volume_context['portals']}")
        staging, target = str(work / "staging" / vid), str(work / "pod" / "mount")

        def attach() -> None:
            pctx = timed("ControllerPublishVolume", lambda: ctl.ControllerPublishVolume(
                csi_pb2.ControllerPublishVolumeRequest(volume_id=vid, node_id=node_id,
                                                       volume_capability=cap)).publish_context)
            timed("NodeStageVolume", lambda: node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
                volume_id=vid, staging_target_path=staging, volume_capability=cap, publish_context=pctx,
                volume_context=volume.volume_context)))
            timed("NodePublishVolume", lambda: node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap,
                publish_context=pctx)))

        def detach() -> None:
            timed("NodeUnpublishVolume", lambda: node.NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target)))
            timed("NodeUnstageVolume", lambda: node.NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging)))
            timed("ControllerUnpublishVolume", lambda: ctl.ControllerUnpublishVolume(
                csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id)))

        attach()
        maps = runner.run(["multipath", "-ll", volume.volume_context["wwid"]], timeout=30)
        print("    " + "\n    ".join(maps.stdout.strip().splitlines()))
        data = os.urandom(args.data_mib * MiB)

        def write() -> None:
            with open(Path(target) / "data", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        timed(f"write {args.data_mib} MiB + fsync", write)
        detach()
        attach()
        Path("/proc/sys/vm/drop_caches").write_text("3")  # read from the LUN, not the page cache
        same = timed("read back", lambda: hashlib.sha256((Path(target) / "data").read_bytes()).digest()
                     == hashlib.sha256(data).digest())
        print(f"    checksum after unstage/stage {'matches' if same else 'DIFFERS'}")
        detach()
        timed("DeleteVolume", lambda: ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid)))
    shutil.rmtree(work / "pool", ignore_errors=True)
    print(f"data {'verified' if same else 'CORRUPTED'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
