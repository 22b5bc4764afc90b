"""Fixtures for the real-kernel suite; it runs only inside the testbed VM (testbed/run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PORTALS = ["127.0.0.11:3260", "127.0.0.12:3260"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.testbed)
            if os.environ.get("TESTBED") != "1":
                item.add_marker(pytest.mark.skip(reason="needs the testbed VM: run it with testbed/run"))


@pytest.fixture
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Under /var/tmp so the backing files live on the VM's disk, not in the 9p share.
    path = Path("/var/tmp/csi-iscsi-pool")
    path.mkdir(parents=True, exist_ok=True)
    yield path


@pytest.fixture(scope="session")
def initiator_iqn() -> str:
    from csi_iscsi.host.initiator import read_initiator_name

    return read_initiator_name()


def scrub_iscsi_and_lio(vg: str | None = None, pool_dirs: tuple[Path, ...] = ()) -> None:
    """What a failed test can leave between this suite's tests, so it fails alone and not the next
    ones too: mounts of iSCSI devices, our sessions and node records, unused maps, our LIO targets,
    and the LIO objects over the test volume group (which would keep it from being removed) or over
    files in pool_dirs."""
    import subprocess

    from csi_iscsi import contract
    from csi_iscsi.host.mounts import MountTable

    iscsi = ("/dev/mapper/3", "/dev/sd", "/dev/dm-")
    for target in sorted({m.target for m in MountTable().all() if m.source.startswith(iscsi)}, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    prefix = contract.DEFAULT_TARGET_IQN_PREFIX + ":"
    sessions = subprocess.run(["iscsiadm", "-m", "session"], capture_output=True, text=True).stdout
    for iqn in sorted({w for line in sessions.splitlines() for w in line.split() if w.startswith(prefix)}):
        subprocess.run(["iscsiadm", "-m", "node", "-T", iqn, "--logout"], check=False, capture_output=True, timeout=120)
    subprocess.run(["iscsiadm", "-m", "node", "-o", "delete"], check=False, capture_output=True)
    subprocess.run(["multipath", "-F"], check=False, capture_output=True, timeout=120)
    from rtslib_fb import RTSRoot

    root = RTSRoot()
    for target in list(root.targets):
        if target.wwn.startswith(prefix):
            target.delete()
    owned = tuple(f"{d}/" for d in pool_dirs) + ((f"/dev/{vg}/", f"/dev/mapper/{vg}-") if vg else ())
    for so in list(root.storage_objects):
        if owned and so.plugin in ("block", "fileio") and str(so.udev_path).startswith(owned):
            so.delete()


@pytest.fixture
def thin_vg() -> Iterator[str]:
    """An LVM thin pool on a loop device inside the VM: volume group csitest, thin pool thin."""
    import subprocess

    vg, image = "csitest", Path("/var/tmp/csitest-thin.img")

    def remove() -> None:
        scrub_iscsi_and_lio(vg)
        subprocess.run(["vgremove", "-q", "-f", vg], check=False, capture_output=True)
        for line in subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.splitlines():
            loop_dev = line.split(":")[0]
            subprocess.run(["pvremove", "-q", "-f", loop_dev], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", loop_dev], check=False)
        image.unlink(missing_ok=True)

    remove()  # a test that failed before may have left it
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        for cmd in (["pvcreate", "-q", loop], ["vgcreate", "-q", vg, loop],
                    ["lvcreate", "-q", "-y", "-L", "800M", "-T", f"{vg}/thin"]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, f"{cmd}: {done.stderr.strip()}"
        yield vg
    finally:
        remove()


def leftovers(volume_id: str, mountpoints: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """Everything of this volume still on the initiator side: sessions, records, devices, map, mounts."""
    import subprocess

    from csi_iscsi import contract
    from csi_iscsi.host.mounts import MountTable
    from csi_iscsi.host.scsi import Scsi

    wwid = contract.wwid(volume_id)
    # Asked of iscsiadm itself, not of the code under test.
    sessions = subprocess.run(["iscsiadm", "-m", "session"], capture_output=True, text=True).stdout
    records = subprocess.run(["iscsiadm", "-m", "node"], capture_output=True, text=True).stdout
    found = [f"session: {line}" for line in sessions.splitlines() if volume_id in line]
    found += [f"node record: {line}" for line in records.splitlines() if volume_id in line]
    if Path(f"/dev/mapper/{wwid}").exists():
        found.append(f"multipath map {wwid}")
    wwids = Path("/etc/multipath/wwids")
    if wwids.exists() and f"/{wwid}/" in wwids.read_text().split():  # multipath -w comments the line out
        found.append(f"multipath wwids entry {wwid}")
    scsi = Scsi()
    found += [f"SCSI device {d.name}" for d in Path("/sys/block").iterdir()
              if d.name.startswith("sd") and scsi.wwid(d.name) == wwid]
    table = MountTable().all()
    found += [f"mount at {m.target}" for m in table if m.target in mountpoints or wwid in m.source]
    return found
