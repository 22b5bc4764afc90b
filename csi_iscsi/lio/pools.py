"""Where volumes' bytes live on the target node.

fileio: a file per volume in a directory, exported by LIO's fileio backstore; sparse unless the
pool preallocates. LIO fixes a fileio object's size at creation, so such a volume grows offline
only (the object is recreated, with the same unit serial, over the enlarged file, while no node
has it published).
lvm-thin: a thin LV per volume in a volume group's thin pool, exported by LIO's block backstore;
it grows online (lvextend; the initiator sees the new size after a rescan).

What a pool can still give is asked of the pool with the provisioned sizes from the records
(never by listing the pool's directory or volume group).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from csi_iscsi.base.errors import Internal, InvalidArgument, NotFound
from csi_iscsi.base.runner import CommandFailed, Runner
from csi_iscsi.contract import POOL_NAME_RE

GiB = 1024**3


@dataclass(frozen=True)
class Backing:
    backstore: str  # "fileio" or "block"
    path: str


class Pool(Protocol):
    name: str
    kind: str
    online_expansion: bool

    def available_bytes(self, provisioned: Mapping[str, int]) -> int:
        """What a new volume or a growth may still take, given every volume's provisioned size."""
        ...

    def check(self) -> None:
        """Raises when the pool cannot be used now."""
        ...

    def allocate(self, volume_id: str, size: int) -> Backing: ...
    def exists(self, volume_id: str) -> bool: ...
    def grow(self, volume_id: str, size: int) -> None: ...
    def release(self, volume_id: str) -> None: ...


class Reservations:
    """Bytes promised to calls in flight (a growth not yet recorded), so two calls cannot both take
    the last free bytes. In memory only: a restart ends every call that held one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def hold(self, pool: str, delta: int) -> None:
        with self._lock:
            self._held[pool] = self._held.get(pool, 0) + delta

    def held(self, pool: str) -> int:
        with self._lock:
            return self._held.get(pool, 0)


class FileioPool:
    """Files in a directory. Without overprovisioning (the default) the pool counts what the
    filesystem really has free (f_bavail), minus what its sparse files may still claim, minus a
    reserve that keeps the filesystem (often the root one, which also holds the driver's state and
    the saved LIO config) from filling up."""

    kind = "fileio"
    online_expansion = False

    def __init__(self, name: str, directory: Path, overprovision: float = 1.0, *,
                 preallocate: bool = False, reserve: int | None = None) -> None:
        self.name = name
        self.directory = directory
        self.overprovision = overprovision
        self.preallocate = preallocate
        self.reserve = reserve
        # Other fileio pools on the same filesystem: their files' claims come out of the same free space.
        self.siblings: list[FileioPool] = []

    def _path(self, volume_id: str) -> Path:
        return self.directory / f"{volume_id}.img"

    def _reserve(self, size: int) -> int:
        return self.reserve if self.reserve is not None else min(GiB, size // 20)

    def check(self) -> None:
        os.statvfs(self.directory)

    def available_bytes(self, provisioned: Mapping[str, int]) -> int:
        st = os.statvfs(self.directory)
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        headroom = free - self._reserve(size)
        by_ratio = int(size * self.overprovision) - sum(provisioned.values())
        if self.overprovision > 1:
            # Overcommit is the operator's choice, bounded by the ratio; the reserve still holds.
            return max(0, min(by_ratio, headroom))
        unclaimed = sum(max(0, capacity - self._allocated(volume_id)) for volume_id, capacity in provisioned.items())
        return max(0, min(by_ratio, headroom - unclaimed))

    def _allocated(self, volume_id: str) -> int:
        for pool in (self, *self.siblings):
            try:
                return pool._path(volume_id).stat().st_blocks * 512
            except FileNotFoundError:
                continue
        return 0

    def filesystem(self) -> int:
        return os.stat(self.directory).st_dev

    def allocate(self, volume_id: str, size: int) -> Backing:
        path = self._path(volume_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            if self.preallocate:
                os.posix_fallocate(fd, 0, size)
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
    """Thin LVs in one thin pool. Every decision is taken from LVM's own report (`lvs` with a
    selection, which answers 0 and nothing when no LV matches), never from an exit code: LVM's
    exit code 5 means any failure at all (locking, a missing PV, a full pool), not "not found"."""

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

    def lv_size(self, lv_name: str) -> int | None:
        """The LV's size in bytes, None when LVM reports no such LV; any LVM failure raises."""
        out = self._runner.run(["lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size",
                                "-S", f"lv_name={lv_name}", self.vg], timeout=30).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == lv_name:
                return int(fields[1])
        return None

    def _total_bytes(self) -> int:
        # The thin pool's size changes only when an admin extends it: ask LVM at most every 30 s.
        now = time.monotonic()
        if self._total is None or now - self._total[1] > 30:
            size = self.lv_size(self.thinpool)
            if size is None:
                raise NotFound(f"thin pool {self.vg}/{self.thinpool} of pool {self.name} does not exist")
            self._total = (int(size * self.overprovision), now)
        return self._total[0]

    def check(self) -> None:
        self._total_bytes()

    def available_bytes(self, provisioned: Mapping[str, int]) -> int:
        return max(0, self._total_bytes() - sum(provisioned.values()))

    def allocate(self, volume_id: str, size: int) -> Backing:
        if self.lv_size(volume_id) is None:
            try:
                self._runner.run(["lvcreate", "-q", "-y", "-V", f"{size}b", "-T", f"{self.vg}/{self.thinpool}",
                                  "-n", volume_id], timeout=120)
            except CommandFailed:
                if self.lv_size(volume_id) is None:
                    raise
        return Backing("block", f"/dev/{self.vg}/{volume_id}")

    def exists(self, volume_id: str) -> bool:
        return self.lv_size(volume_id) is not None

    def grow(self, volume_id: str, size: int) -> None:
        current = self.lv_size(volume_id)
        if current is None:
            raise Internal(f"LV {self._lv(volume_id)} of pool {self.name} is missing; cannot grow it")
        if current >= size:
            return
        try:
            self._runner.run(["lvextend", "-q", "-L", f"{size}b", self._lv(volume_id)], timeout=120)
        except CommandFailed:
            grown = self.lv_size(volume_id)
            if grown is None or grown < size:
                raise
        # What LVM reports now, not what lvextend's exit said.
        grown = self.lv_size(volume_id)
        if grown is None or grown < size:
            raise Internal(f"lvextend of {self._lv(volume_id)} to {size} bytes left it at {grown} bytes")

    def release(self, volume_id: str) -> None:
        if self.lv_size(volume_id) is not None:
            self._runner.run(["lvremove", "-q", "-y", self._lv(volume_id)], timeout=120)
        if self.lv_size(volume_id) is not None:
            raise Internal(f"LV {self._lv(volume_id)} is still there after lvremove")


_POOL_SPEC = re.compile(r"^[a-z-]+=[^,=]+(,[a-z-]+=[^,=]+)*$")
_SIZE = re.compile(r"^(\d+)([KMGT]i?)?$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _parse_size(name: str, key: str, value: str) -> int:
    m = _SIZE.fullmatch(value)
    if not m:
        raise InvalidArgument(f"pool {name}: {key} must be bytes, optionally with K, M, G or T (e.g. 2G)")
    return int(m[1]) * _UNITS[(m[2] or "")[:1]]


def _parse_bool(name: str, key: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise InvalidArgument(f"pool {name}: {key} must be true or false")
    return value == "true"


def parse_pool_spec(spec: str, runner: Runner) -> Pool:
    """`name=NAME,type=fileio,path=DIR[,overprovision=R][,preallocate=true][,reserve=SIZE]` or
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
    except ValueError:
        raise InvalidArgument(f"pool {name}: overprovision must be a number") from None
    if ratio <= 0:
        raise InvalidArgument(f"pool {name}: overprovision must be > 0")
    pool: Pool
    if kind == "fileio":
        directory = Path(fields.pop("path", ""))
        if not directory.is_absolute():
            raise InvalidArgument(f"pool {name}: path must be an absolute directory")
        preallocate = _parse_bool(name, "preallocate", fields.pop("preallocate", "false"))
        reserve = _parse_size(name, "reserve", fields.pop("reserve")) if "reserve" in fields else None
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pool = FileioPool(name, directory, ratio, preallocate=preallocate, reserve=reserve)
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
