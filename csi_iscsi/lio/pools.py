"""Where volumes' bytes live on the target node.

fileio: a sparse file per volume in a directory, exported by LIO's fileio backstore. LIO fixes a
fileio object's size at creation, so such a volume grows offline only (the object is recreated,
with the same unit serial, over the enlarged file, while no node has it published).
lvm-thin: a thin LV per volume in a volume group's thin pool, exported by LIO's block backstore;
it grows online (lvextend; the initiator sees the new size after a rescan).

Capacity is accounted from the provisioned sizes held in memory (never by listing the pool):
available = total x overprovision - provisioned.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from csi_iscsi.base.errors import InvalidArgument
from csi_iscsi.base.runner import Runner
from csi_iscsi.contract import POOL_NAME_RE


@dataclass(frozen=True)
class Backing:
    backstore: str  # "fileio" or "block"
    path: str


class Pool(Protocol):
    name: str
    kind: str
    online_expansion: bool

    def total_bytes(self) -> int: ...
    def allocate(self, volume_id: str, size: int) -> Backing: ...
    def exists(self, volume_id: str) -> bool: ...
    def grow(self, volume_id: str, size: int) -> None: ...
    def release(self, volume_id: str) -> None: ...


class Accounting:
    """Provisioned bytes per pool, kept in memory and updated with every create/grow/delete."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._provisioned: dict[str, int] = {}

    def add(self, pool: str, delta: int) -> None:
        with self._lock:
            self._provisioned[pool] = self._provisioned.get(pool, 0) + delta

    def provisioned(self, pool: str) -> int:
        with self._lock:
            return self._provisioned.get(pool, 0)


class FileioPool:
    kind = "fileio"
    online_expansion = False

    def __init__(self, name: str, directory: Path, overprovision: float = 1.0) -> None:
        self.name = name
        self.directory = directory
        self.overprovision = overprovision

    def _path(self, volume_id: str) -> Path:
        return self.directory / f"{volume_id}.img"

    def total_bytes(self) -> int:
        st = os.statvfs(self.directory)
        return int(st.f_blocks * st.f_frsize * self.overprovision)

    def allocate(self, volume_id: str, size: int) -> Backing:
        path = self._path(volume_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        return Backing("fileio", str(path))

    def exists(self, volume_id: str) -> bool:
        return self._path(volume_id).exists()

    def grow(self, volume_id: str, size: int) -> None:
        self.allocate(volume_id, size)

    def release(self, volume_id: str) -> None:
        self._path(volume_id).unlink(missing_ok=True)


class LvmThinPool:
    kind = "lvm-thin"
    online_expansion = True

    def __init__(self, name: str, runner: Runner, vg: str, thinpool: str, overprovision: float = 1.0) -> None:
        self.name = name
        self._runner = runner
        self.vg = vg
        self.thinpool = thinpool
        self.overprovision = overprovision
        self._total: tuple[int, float] | None = None

    def _lv(self, volume_id: str) -> str:
        return f"{self.vg}/{volume_id}"

    def total_bytes(self) -> int:
        # The thin pool's size changes only when an admin extends it: ask LVM at most every 30 s.
        now = time.monotonic()
        if self._total is None or now - self._total[1] > 30:
            out = self._runner.run(["lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size",
                                    f"{self.vg}/{self.thinpool}"], timeout=30).stdout.strip()
            self._total = (int(int(out) * self.overprovision), now)
        return self._total[0]

    def allocate(self, volume_id: str, size: int) -> Backing:
        if not self.exists(volume_id):
            self._runner.run(["lvcreate", "-q", "-y", "-V", f"{size}b", "-T", f"{self.vg}/{self.thinpool}",
                              "-n", volume_id], timeout=120)
        return Backing("block", f"/dev/{self.vg}/{volume_id}")

    def exists(self, volume_id: str) -> bool:
        result = self._runner.run(["lvs", "--noheadings", "-o", "lv_name", self._lv(volume_id)],
                                  ok_codes=(0, 5), timeout=30)
        return result.returncode == 0 and result.stdout.strip() == volume_id

    def grow(self, volume_id: str, size: int) -> None:
        self._runner.run(["lvextend", "-q", "-L", f"{size}b", self._lv(volume_id)], ok_codes=(0, 5), timeout=120)

    def release(self, volume_id: str) -> None:
        if self.exists(volume_id):
            self._runner.run(["lvremove", "-q", "-y", self._lv(volume_id)], timeout=120)


_POOL_SPEC = re.compile(r"^[a-z-]+=[^,=]+(,[a-z-]+=[^,=]+)*$")


def parse_pool_spec(spec: str, runner: Runner) -> Pool:
    """`name=NAME,type=fileio,path=DIR[,overprovision=R]` or
    `name=NAME,type=lvm-thin,vg=VG,thinpool=LV[,overprovision=R]`."""
    if not _POOL_SPEC.fullmatch(spec):
        raise InvalidArgument(f"pool spec {spec!r} is not key=value[,key=value...]")
    fields = dict(item.split("=", 1) for item in spec.split(","))
    name = fields.pop("name", "")
    kind = fields.pop("type", "fileio")
    if not POOL_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"pool name {name!r} must match {POOL_NAME_RE.pattern}")
    try:
        ratio = float(fields.pop("overprovision", "1.0"))
    except ValueError as exc:
        raise InvalidArgument(f"pool {name}: overprovision must be a number") from exc
    if ratio <= 0:
        raise InvalidArgument(f"pool {name}: overprovision must be > 0")
    pool: Pool
    if kind == "fileio":
        directory = Path(fields.pop("path", ""))
        if not directory.is_absolute():
            raise InvalidArgument(f"pool {name}: path must be an absolute directory")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pool = FileioPool(name, directory, ratio)
    elif kind == "lvm-thin":
        vg, thin = fields.pop("vg", ""), fields.pop("thinpool", "")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", vg) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", thin):
            raise InvalidArgument(f"pool {name}: vg and thinpool must be LVM names")
        pool = LvmThinPool(name, runner, vg, thin, ratio)
    else:
        raise InvalidArgument(f"pool {name}: type must be fileio or lvm-thin, not {kind!r}")
    if fields:
        raise InvalidArgument(f"pool {name}: unknown keys {sorted(fields)}")
    return pool

