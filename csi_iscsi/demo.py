"""The main job end to end on the embedded default (the testbed VM as target and node):
carve a volume, export it on two portals, attach over both paths into one multipath map,
mkfs, mount, write and read back data, detach and remove it, printing the time of each step.

Run inside the testbed: scripts/demo (or testbed/run -- python -m csi_iscsi.demo).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csi_iscsi import contract
from csi_iscsi.host.attach import Attacher
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.initiator import read_initiator_name
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from csi_iscsi.host.mounts import MountTable
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.runner import SubprocessRunner
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.target.lio import Lio


@contextmanager
def step(name: str, times: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    yield
    times[name] = time.monotonic() - start
    print(f"  {name:<34} {times[name]:6.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pool-dir", type=Path, default=Path("/var/tmp/csi-iscsi-pool"))
    p.add_argument("--portal", action="append", default=[])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--data-mib", type=int, default=32)
    args = p.parse_args(argv)
    portals = args.portal or ["127.0.0.11:3260", "127.0.0.12:3260"]

    volume_id = contract.volume_id_for_name(f"demo-{os.getpid()}")
    iqn, wwid = contract.target_iqn(volume_id), contract.wwid(volume_id)
    initiator = read_initiator_name()
    args.pool_dir.mkdir(parents=True, exist_ok=True)
    backing = args.pool_dir / f"{volume_id}.img"
    size = args.size_mib * 1024 * 1024
    runner = SubprocessRunner()
    lio = Lio()
    multipath = Multipath(runner)
    attacher = Attacher(Iscsiadm(runner), Scsi(), multipath, SessionSettings(replacement_timeout=5))
    fs = Filesystems(runner, MountTable())
    mountpoint = Path(tempfile.mkdtemp(prefix="csi-iscsi-demo-"))
    times: dict[str, float] = {}
    print(f"volume {volume_id}: {args.size_mib} MiB, target {iqn}, portals {', '.join(portals)}")
    try:
        with step("carve + export (LIO)", times):
            with open(backing, "wb") as f:
                f.truncate(size)
            lio.ensure_fileio(volume_id, str(backing), size, contract.unit_serial(volume_id))
            lio.ensure_target(iqn, portals, volume_id, chap=False)
            lio.grant(iqn, initiator)
        with step(f"attach ({len(portals)} logins + multipath)", times):
            attachment = attacher.attach(iqn, portals, 0, wwid)
        print(f"    map {attachment.device} over {', '.join(attachment.paths)}")
        with step("mkfs.ext4 + mount", times):
            fs.ensure(attachment.device, "ext4")
            fs.mount(attachment.device, str(mountpoint), "ext4")
        data = os.urandom(args.data_mib * 1024 * 1024)
        with step(f"write {args.data_mib} MiB + fsync", times), open(mountpoint / "data", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with step("umount + remount + read back", times):
            fs.umount(str(mountpoint))
            fs.mount(attachment.device, str(mountpoint), "ext4")
            same = hashlib.sha256((mountpoint / "data").read_bytes()).digest() == hashlib.sha256(data).digest()
        print(f"    checksum {'matches' if same else 'DIFFERS'}")
        with step("detach (umount, map, devices, logout)", times):
            fs.umount(str(mountpoint))
            attacher.detach(iqn, 0, wwid)
    finally:
        if fs.is_mounted(str(mountpoint)):
            fs.umount(str(mountpoint))
        attacher.detach(iqn, 0, wwid)
        with step("remove (ACL, target, backstore)", times):
            lio.revoke(iqn, initiator)
            lio.delete_target(iqn)
            lio.delete_storage_object(volume_id)
            backing.unlink(missing_ok=True)
        mountpoint.rmdir()
    print(f"total {sum(times.values()):.2f} s; data {'verified' if same else 'CORRUPTED'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
