"""Where volumes' bytes live on the target node.

fileio: a file per volume in a directory, exported by LIO's fileio backstore; sparse unless the
pool preallocates. LIO fixes a fileio object's size at creation, so such a volume grows offline
only (the object is recreated, with the same unit serial, over the enlarged file, while no node
has it published).
lvm-thin: a thin LV per volume in a volume group's thin pool, exported by LIO's block backstore;
it grows online (lvextend; the initiator sees the new size after a rescan).

What a pool can still give is asked of the pool with the provisioned sizes from the records
(never by listing the pool's directory or volume group).

Snapshots and clones are the pools' too (LIO only ever serves volumes):
- lvm-thin: a snapshot is a thin snapshot LV of the volume (instant; LVM suspends the origin
  while it takes it, so it is crash-consistent even in use), left inactive; a volume made from a
  snapshot or another volume is a thin snapshot of that, activated, and grown when larger. Thin
  LVs are independent of each other: any of them may be removed in any order.
- fileio: a snapshot is a copy of the volume's file, a volume made from one a copy of that
  (csi_iscsi.lio.filecopy: a reflink where the filesystem shares extents, a sparse copy
  otherwise). A copy is written beside its final name and renamed into place once complete, so a
  file under a snapshot's or volume's name is always whole.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from csi_iscsi.base.atomic import fsync_dir, remove_durably
from csi_iscsi.base.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from csi_iscsi.base.runner import CommandFailed, Runner
from csi_iscsi.contract import POOL_NAME_RE, is_snapshot_id, is_volume_id
from csi_iscsi.lio.filecopy import sparse_copy, try_reflink

GiB = 1024**3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backing:
    backstore: str  # "fileio" or "block"
    path: str


@dataclass(frozen=True)
class PoolUsage:
    """What the pool's storage holds, as its own tools report it (for metrics): the filesystem of a
    fileio pool (shared with whatever else lives there), or the thin pool of an lvm-thin one."""
    size_bytes: int
    used_bytes: int
    data_percent: float | None = None  # thin pools only
    metadata_percent: float | None = None


class Pool(Protocol):
    name: str
    kind: str
    online_expansion: bool

    @property
    def copies_data(self) -> bool:
        """True when a snapshot may have to copy the volume's bytes (long work; see LioTargetService)."""
        ...

    def available_bytes(self, provisioned: Mapping[str, int], shared: Collection[str] = ()) -> int:
        """What a new volume, a growth or a snapshot may still take, given the provisioned size of
        every volume and snapshot. `shared`: those of them whose blocks may be shared with another
        (snapshots, and volumes made from one), which may need all their size anew."""
        ...

    def check(self) -> None:
        """Raises when the pool cannot be used now."""
        ...

    def allocate(self, volume_id: str, size: int) -> Backing: ...
    def exists(self, volume_id: str) -> bool: ...
    def grow(self, volume_id: str, size: int) -> None: ...
    def release(self, volume_id: str) -> None: ...

    def present(self, item_ids: Collection[str]) -> set[str]:
        """Those of item_ids whose data the pool holds, from one listing of the pool (ListVolumes
        asks this for a whole page)."""
        ...

    def usage_now(self) -> PoolUsage: ...

    def check_usage(self) -> None:
        """Raises ResourceExhausted when the pool is too full for new shared blocks (snapshots,
        clones), whatever the provisioned sizes say."""
        ...

    def snapshot(self, volume_id: str, snapshot_id: str, *, in_use: bool,
                 cancel: threading.Event | None = None) -> None:
        """Makes (or finishes) snapshot_id from the volume. in_use: a node may write the volume
        now, so only a consistent way is allowed (FailedPrecondition otherwise)."""
        ...

    def snapshot_exists(self, snapshot_id: str) -> bool: ...
    def release_snapshot(self, snapshot_id: str) -> None: ...
    def items(self) -> dict[str, str]:
        """item id (a volume's or a snapshot's) -> where its data is, for every item the pool holds
        under the driver's names, from one listing. csi-iscsi doctor only."""
        ...

    def allocate_from(self, source_id: str, volume_id: str, size: int, *, in_use: bool,
                      cancel: threading.Event | None = None) -> Backing:
        """A new volume holding the source's (a snapshot's or a volume's) bytes, size bytes long."""
        ...


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
        self._reflinks: bool | None = None
        self._probe_lock = threading.Lock()

    def _path(self, volume_id: str) -> Path:
        return self.directory / f"{volume_id}.img"

    def _reserve(self, size: int) -> int:
        return self.reserve if self.reserve is not None else min(GiB, size // 20)

    def check(self) -> None:
        os.statvfs(self.directory)

    def available_bytes(self, provisioned: Mapping[str, int], shared: Collection[str] = ()) -> int:
        st = os.statvfs(self.directory)
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        headroom = free - self._reserve(size)
        by_ratio = int(size * self.overprovision) - sum(provisioned.values())
        if self.overprovision > 1:
            # Overcommit is the operator's choice, bounded by the ratio; the reserve still holds.
            return max(0, min(by_ratio, headroom))
        # A file whose blocks a reflink may share with another holds none of its own for sure: each
        # of its blocks may need a new one when either side is written, so it is counted in full.
        # Where the filesystem cannot reflink, every copy owns its blocks and is counted as a volume.
        if not self.reflinks():
            shared = ()
        unclaimed = sum(max(0, capacity - (0 if item in shared else self._allocated(item)))
                        for item, capacity in provisioned.items())
        return max(0, min(by_ratio, headroom - unclaimed))

    def _allocated(self, volume_id: str) -> int:
        """The blocks an item holds, its copy in progress (`.part`) included: those have left the
        filesystem's free space already."""
        for pool in (self, *self.siblings):
            for path in (pool._path(volume_id), pool._partial(volume_id)):
                try:
                    return path.stat().st_blocks * 512
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

    def present(self, item_ids: Collection[str]) -> set[str]:
        names = set(os.listdir(self.directory))
        return {i for i in item_ids if self._path(i).name in names}

    def items(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in sorted(os.listdir(self.directory)):
            item = name.removesuffix(".part").removesuffix(".img")
            if item != name and (is_volume_id(item) or is_snapshot_id(item)):
                found.setdefault(item, str(self.directory / name))
        return found

    def usage_now(self) -> PoolUsage:
        st = os.statvfs(self.directory)
        return PoolUsage(st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize)

    def grow(self, volume_id: str, size: int) -> None:
        self.allocate(volume_id, size)

    def release(self, volume_id: str) -> None:
        # Durably: a file that came back after a power cut would be taken for the item's data.
        remove_durably(self._partial(volume_id))
        remove_durably(self._path(volume_id))

    # Snapshots and clones ---------------------------------------------------------------------

    @property
    def copies_data(self) -> bool:
        """A snapshot or clone here is a copy of the data (long), unless the filesystem reflinks."""
        return not self.reflinks()

    def reflinks(self) -> bool:
        """Whether the pool's filesystem shares extents: asked once, with two scratch files. An
        error (a full filesystem) is no answer: taken as "it does" (every copy counted in full,
        the safe side) and asked again next time."""
        with self._probe_lock:
            if self._reflinks is not None:
                return self._reflinks
            probe = self.directory / f".reflink-probe-{os.getpid()}-{threading.get_ident()}"
            copy = probe.with_name(probe.name + ".copy")
            try:
                probe.write_bytes(b"\0" * 4096)
                self._reflinks = try_reflink(probe, copy)
                return self._reflinks
            except OSError as exc:
                log.warning("pool %s: cannot tell whether %s reflinks (%s); counting copies in full",
                            self.name, self.directory, exc)
                return True
            finally:
                probe.unlink(missing_ok=True)
                copy.unlink(missing_ok=True)

    def _partial(self, item_id: str) -> Path:
        return self.directory / f"{item_id}.img.part"

    def check_usage(self) -> None:
        """Copies are counted by available_bytes (their records' sizes, in full)."""

    def _copy(self, source_id: str, item_id: str, *, in_use: bool, cancel: threading.Event | None = None,
              size: int | None = None) -> None:
        final = self._path(item_id)
        if final.exists():
            return
        source, partial = self._path(source_id), self._partial(item_id)
        if not source.exists():
            raise Unavailable(f"the data of {source_id} is missing from pool {self.name} ({source}); check the "
                              "pool's directory")
        try:
            if not try_reflink(source, partial):
                if in_use:
                    raise FailedPrecondition(
                        f"{source_id} is published, and the filesystem of fileio pool {self.name} cannot reflink "
                        f"({self.directory}): a copy made while a node may write would not be crash-consistent. "
                        "Stop the pod (or unpublish the volume) and retry, or put the pool on XFS with reflink=1")
                copied = sparse_copy(source, partial, cancel, label=f"pool {self.name}: {item_id}")
                log.info("pool %s: %s copied from %s (%d bytes of data, holes kept)", self.name, item_id,
                         source_id, copied)
            if size is not None:
                with open(partial, "r+b") as f:
                    if os.fstat(f.fileno()).st_size < size:
                        os.ftruncate(f.fileno(), size)
                        os.fsync(f.fileno())
            os.rename(partial, final)
            fsync_dir(self.directory)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def snapshot(self, volume_id: str, snapshot_id: str, *, in_use: bool,
                 cancel: threading.Event | None = None) -> None:
        self._copy(volume_id, snapshot_id, in_use=in_use, cancel=cancel)

    def snapshot_exists(self, snapshot_id: str) -> bool:
        return self._path(snapshot_id).exists()

    def release_snapshot(self, snapshot_id: str) -> None:
        self.release(snapshot_id)

    def allocate_from(self, source_id: str, volume_id: str, size: int, *, in_use: bool,
                      cancel: threading.Event | None = None) -> Backing:
        self._copy(source_id, volume_id, in_use=in_use, cancel=cancel, size=size)
        return self.allocate(volume_id, size)


class LvmThinPool:
    """Thin LVs in one thin pool. Every decision is taken from LVM's own report (`lvs` with a
    selection, which answers 0 and nothing when no LV matches), never from an exit code: LVM's
    exit code 5 means any failure at all (locking, a missing PV, a full pool), not "not found"."""

    kind = "lvm-thin"
    online_expansion = True
    copies_data = False

    def __init__(self, name: str, runner: Runner, vg: str, thinpool: str, overprovision: float = 1.0,
                 usage_limit: float = 90.0) -> None:
        self.name = name
        self._runner = runner
        self.vg = vg
        self.thinpool = thinpool
        self.overprovision = overprovision
        # Snapshots and clones share blocks until written, then take new ones: past this percentage
        # of the thin pool's data or metadata in use, they are refused before the pool fills.
        self.usage_limit = usage_limit
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

    def available_bytes(self, provisioned: Mapping[str, int], shared: Collection[str] = ()) -> int:
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

    def present(self, item_ids: Collection[str]) -> set[str]:
        names = set(self._runner.run(["lvs", "--noheadings", "-o", "lv_name", self.vg], timeout=30).stdout.split())
        return set(item_ids) & names

    def items(self) -> dict[str, str]:
        names = self._runner.run(["lvs", "--noheadings", "-o", "lv_name", self.vg], timeout=30).stdout.split()
        return {n: f"/dev/{self.vg}/{n}" for n in sorted(names) if is_volume_id(n) or is_snapshot_id(n)}

    def usage_now(self) -> PoolUsage:
        # One lvs, bounded short: a scrape must answer even while LVM is locked by a long command.
        out = self._runner.run(["lvs", "--noheadings", "--units", "b", "--nosuffix", "-o",
                                "lv_name,lv_size,data_percent,metadata_percent", "-S", f"lv_name={self.thinpool}",
                                self.vg], timeout=5).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 4 and fields[0] == self.thinpool:
                size = int(fields[1])
                data, metadata = (float(f.replace(",", ".")) for f in fields[2:])
                # The same size available_bytes would ask LVM for: a scrape costs one lvs, not two.
                self._total = (int(size * self.overprovision), time.monotonic())
                return PoolUsage(size, int(size * data / 100), data, metadata)
        raise Unavailable(f"thin pool {self.vg}/{self.thinpool} of pool {self.name} does not exist")

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

    # Snapshots and clones ---------------------------------------------------------------------

    def usage(self) -> tuple[float, float]:
        """The thin pool's data and metadata use, in percent, as LVM reports them."""
        out = self._runner.run(["lvs", "--noheadings", "-o", "lv_name,data_percent,metadata_percent",
                                "-S", f"lv_name={self.thinpool}", self.vg], timeout=30).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == self.thinpool:
                return float(fields[1].replace(",", ".")), float(fields[2].replace(",", "."))
        raise Unavailable(f"thin pool {self.vg}/{self.thinpool} of pool {self.name} does not exist")

    def check_usage(self) -> None:
        data, metadata = self.usage()
        if max(data, metadata) >= self.usage_limit:
            raise ResourceExhausted(
                f"thin pool {self.vg}/{self.thinpool} (pool {self.name}) is {data:.1f}% full of data and "
                f"{metadata:.1f}% of metadata; snapshots and clones are refused from {self.usage_limit:g}% on, "
                "so that writes to existing volumes do not fill it. Extend the thin pool (lvextend) or free space")

    def _thin_snapshot(self, source_id: str, lv_name: str, *, active: bool) -> None:
        if self.lv_size(lv_name) is not None:
            return
        if self.lv_size(source_id) is None:
            raise Unavailable(f"LV {self._lv(source_id)} of pool {self.name} is missing; check the volume group")
        # A snapshot LV gets LVM's activation-skip flag: it stays inactive until a volume is made
        # from it. A volume made from one is created without the flag, active, like any volume.
        argv = ["lvcreate", "-q", "-y", "-s", "-n", lv_name, *(["-k", "n"] if active else []), self._lv(source_id)]
        try:
            self._runner.run(argv, timeout=120)
        except CommandFailed:
            if self.lv_size(lv_name) is None:
                raise

    def snapshot(self, volume_id: str, snapshot_id: str, *, in_use: bool,
                 cancel: threading.Event | None = None) -> None:
        self._thin_snapshot(volume_id, snapshot_id, active=False)

    def snapshot_exists(self, snapshot_id: str) -> bool:
        return self.lv_size(snapshot_id) is not None

    def release_snapshot(self, snapshot_id: str) -> None:
        self.release(snapshot_id)

    def allocate_from(self, source_id: str, volume_id: str, size: int, *, in_use: bool,
                      cancel: threading.Event | None = None) -> Backing:
        self._thin_snapshot(source_id, volume_id, active=True)
        # A retry after a crash may find the LV made but not active; -K: whatever its skip flag.
        self._runner.run(["lvchange", "-q", "-a", "y", "-K", self._lv(volume_id)], timeout=120)
        self.grow(volume_id, size)
        return Backing("block", f"/dev/{self.vg}/{volume_id}")


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


def parse_pool_spec(spec: str, runner: Runner, *, create: bool = True) -> Pool:
    """`name=NAME,type=fileio,path=DIR[,overprovision=R][,preallocate=true][,reserve=SIZE]` or
    `name=NAME,type=lvm-thin,vg=VG,thinpool=LV[,overprovision=R][,usage-limit=PERCENT]`. create:
    make a fileio pool's directory (the controller); a reader (status) makes nothing."""
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
        if create:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pool = FileioPool(name, directory, ratio, preallocate=preallocate, reserve=reserve)
    elif kind == "lvm-thin":
        vg, thin = fields.pop("vg", ""), fields.pop("thinpool", "")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", vg) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", thin):
            raise InvalidArgument(f"pool {name}: vg and thinpool must be LVM names")
        try:
            limit = float(fields.pop("usage-limit", "90"))
        except ValueError:
            raise InvalidArgument(f"pool {name}: usage-limit must be a number (percent)") from None
        if not 0 < limit <= 100:
            raise InvalidArgument(f"pool {name}: usage-limit must be a percentage above 0, at most 100")
        pool = LvmThinPool(name, runner, vg, thin, ratio, usage_limit=limit)
    else:
        raise InvalidArgument(f"pool {name}: type must be fileio or lvm-thin, not {kind!r}")
    if fields:
        raise InvalidArgument(f"pool {name}: unknown keys {sorted(fields)}")
    return pool
