"""dm-multipath maps, named by WWID (user_friendly_names no), assembled by multipathd."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from csi_iscsi.base.errors import DeadlineExceeded
from csi_iscsi.base.metrics import LazyMetric
from csi_iscsi.base.runner import CommandFailed, CommandTimedOut, Runner

log = logging.getLogger(__name__)

MULTIPATH = "multipath"
MULTIPATHD = "multipathd"
DMSETUP = "dmsetup"

# An unstage or detach that failed writes still queued in a map with no path (docs/multipath.md):
# each one is data an application had written and the target never got.
QUEUEING_STOPPED = LazyMetric("Counter", "csi_iscsi_node_queueing_stopped_total",
                              "Detaches that stopped a pathless multipath map's queueing, failing its queued writes")


class MapBusy(CommandFailed):
    """The map could not be flushed (still open, or I/O queued)."""


# multipathd's checker states that mean the path carries no I/O. "i/o pending" (a check still
# running, as on a path just added) and "undef" (not checked yet) are not faults; "ghost" is a
# standby path that is up.
CHECKER_DOWN = frozenset({"faulty", "shaky", "i/o timeout", "delayed"})


@dataclass(frozen=True)
class PathState:
    device: str
    dm_state: str  # active, failed or undef: what device-mapper holds for the path
    checker: str  # ready, faulty, ghost, i/o pending, ...: what multipathd's checker last saw

    @property
    def down(self) -> bool:
        return self.dm_state == "failed" or self.checker in CHECKER_DOWN

    def __str__(self) -> str:
        return f"{self.device} ({self.dm_state}, {self.checker})"


def bad_paths(paths: list[PathState], slaves: Collection[str]) -> list[PathState]:
    """The paths that carry none of the volume's I/O: down ones, and orphans. A path multipathd has
    with dm state "undef" that is not under the map (slaves) was left out of it, e.g. by a failed
    reload; one under the map is only not synced yet."""
    return [p for p in paths if p.down or (p.dm_state == "undef" and p.device not in slaves)]


def paths_condition(portals: int, paths: list[PathState], slaves: Collection[str]) -> tuple[bool, str]:
    """(abnormal, message) of a multipath volume staged with `portals` paths: what
    NodeGetVolumeStats and csi-iscsi status both say."""
    if not paths:
        return True, "multipathd reports no paths for the volume"
    bad = bad_paths(paths, slaves)
    if bad:
        return True, f"{len(bad)} of {len(paths)} paths are down: {', '.join(map(str, bad))}"
    if len(paths) < portals:
        return True, (f"{len(paths)} paths for {portals} portals: a portal has no session; "
                      "the volume has less redundancy than it was given")
    return False, f"all {len(paths)} paths active"


@dataclass(frozen=True)
class MapState:
    dm: str  # dm-N
    paths: int
    dm_state: str  # active or suspend
    queueing: str  # "N chk" (paths up), "N sec" (no usable path: queueing, N s left), off, on, "-"


class Multipath:
    def __init__(self, runner: Runner, *, dev: Path = Path("/dev"), sysfs: Path = Path("/sys"),
                 poll_interval: float = 0.05) -> None:
        self._runner = runner
        self._dev = dev
        self._sys = sysfs
        self._poll = poll_interval
        self._watched: set[str] = set()  # maps a queueing_bounded watches
        self._watch_lock = threading.Lock()

    def map_path(self, wwid: str) -> Path:
        return self._dev / "mapper" / wwid

    def dm_name(self, wwid: str) -> str | None:
        """dm-N of the map named wwid, or None when there is no such map. Asks sysfs when udev has
        not made (or has already removed) /dev/mapper/<name>: udev can lag far behind a map whose
        I/O hangs, and a map must never go unseen while it still holds the volume's paths."""
        path = self.map_path(wwid)
        if path.exists():
            # udev may not have removed the link of a map flushed a moment ago, and dm-N numbers are
            # reused: the link counts only if the kernel's map there has this name.
            dm = Path(os.path.realpath(path)).name
            name = self._read(self._sys / "block" / dm / "dm" / "name")
            if name == wwid or (name is None and (self._sys / "block" / dm).exists()):
                return dm  # (a dm device without its dm/ attributes, as in older fakes: trust the link)
        return next((dm for dm, name, _ in self._maps() if name == wwid), None)

    @staticmethod
    def _read(attribute: Path) -> str | None:
        try:
            return attribute.read_text().strip()
        except OSError:
            return None

    def _maps(self) -> list[tuple[str, str, str]]:
        """(dm-N, name, uuid) of every device-mapper device, read from sysfs."""
        found = []
        for dm in sorted((self._sys / "block").glob("dm-*")):
            name, uuid = self._read(dm / "dm" / "name"), self._read(dm / "dm" / "uuid")
            if name is not None:
                found.append((dm.name, name, uuid or ""))
        return found

    def slaves(self, wwid: str) -> list[str]:
        dm = self.dm_name(wwid)
        if dm is None:
            return []
        try:
            return sorted(p.name for p in (self._sys / "block" / dm / "slaves").iterdir())
        except FileNotFoundError:
            return []

    def remember(self, wwid: str) -> None:
        """Put the WWID in multipath's wwids file before its paths appear: with the node's own
        find_multipaths (Debian's and RHEL's strict or yes), multipathd then builds the map of this
        volume, and of no disk the driver did not ask for."""
        self._runner.run([MULTIPATH, "-a", wwid], timeout=30)

    def forget(self, wwid: str) -> None:
        """Take the WWID out of the wwids file once the volume has left the node."""
        self._runner.run([MULTIPATH, "-w", wwid], ok_codes=(0, 1), timeout=30)

    def stop_queueing(self, name: str) -> bool:
        """Make the map fail queued and new I/O instead of queueing it with no path. Asks multipathd
        (which then keeps it so); without multipathd, device-mapper itself, since then nothing would
        ever end the queueing. False when neither did."""
        try:
            result = self._runner.run([MULTIPATHD, "disablequeueing", "map", name], ok_codes=(0, 1), timeout=10)
            if result.returncode == 0 and "fail" not in result.stdout:
                return True
        except (CommandFailed, CommandTimedOut) as exc:
            log.warning("multipathd could not stop the queueing of %s (%s); asking device-mapper", name, exc)
        return self._runner.run([DMSETUP, "message", name, "0", "fail_if_no_path"], ok_codes=(0, 1),
                                timeout=10).returncode == 0

    def restore_queueing(self, name: str) -> None:
        """Back to the configured no_path_retry, after stop_queueing on a map that stays in use."""
        self._runner.run([MULTIPATHD, "restorequeueing", "map", name], ok_codes=(0, 1), timeout=10)

    def has_usable_path(self, wwid: str) -> bool | None:
        """Whether any path of the map can carry I/O now; None when that cannot be told. Asks
        multipathd, and device-mapper's own path states when multipathd does not answer."""
        try:
            states = self.path_states(wwid)
        except (CommandFailed, CommandTimedOut):
            return self._dm_has_active_path(wwid)
        if not states:
            # multipathd lists none: a map left with no paths at all cannot carry I/O; one whose
            # paths multipathd does not know (restarted, say) is asked of device-mapper.
            if self.dm_name(wwid) is not None and not self.slaves(wwid):
                return False
            return self._dm_has_active_path(wwid)
        return any(s.dm_state == "active" and not s.down for s in states)

    def _dm_has_active_path(self, wwid: str) -> bool | None:
        """From `dmsetup status`: each path is "<major:minor> <A|F> <fail count> ..."."""
        try:
            words = self._runner.run([DMSETUP, "status", wwid], timeout=10).stdout.split()
        except (CommandFailed, CommandTimedOut):
            return None
        states = [words[i + 1] for i, word in enumerate(words[:-1]) if re.fullmatch(r"\d+:\d+", word)]
        return None if not states else "A" in states

    @contextlib.contextmanager
    def queueing_bounded(self, wwid: str, grace: float, check_every: float | None = None) -> Iterator[None]:
        """While the body runs (umount, flush: steps that wait for queued I/O), once the map has had
        no usable path for grace seconds in a row, stop its queueing so that the body can finish:
        the target is dead or has fenced this node, and the volume is leaving it. A path that comes
        back within grace keeps every queued write. Nested uses for one map watch once. If the body
        fails and the map stays, its queueing is restored: whatever still uses it must ride out the
        next outage again."""
        with self._watch_lock:
            nested = wwid in self._watched
            self._watched.add(wwid)
        if nested:
            yield
            return
        done = threading.Event()
        stopped = threading.Event()
        interval = check_every if check_every is not None else min(1.0, max(0.05, grace / 10))

        def watch() -> None:
            pathless_since: float | None = None
            while not done.wait(interval):
                try:
                    if self.dm_name(wwid) is None:
                        return
                    usable = self.has_usable_path(wwid)
                    if usable:
                        pathless_since = None
                    if usable is not False:
                        continue  # no answer keeps the count: a slow multipathd must not reset it
                    now = time.monotonic()
                    pathless_since = now if pathless_since is None else pathless_since
                    if now - pathless_since < grace or done.is_set():
                        continue
                    if self.stop_queueing(wwid):
                        stopped.set()
                        QUEUEING_STOPPED.inc()
                        log.error("multipath map %s has had no usable path for %.0f s while it is being detached: "
                                  "queueing stopped, so writes not yet on the target fail rather than hold the "
                                  "detach", wwid, now - pathless_since)
                        return
                except Exception as exc:  # the bound must outlive a failed check: log and look again
                    log.warning("checking the paths of map %s during its detach: %s", wwid, exc)

        watcher = threading.Thread(target=watch, name=f"queueing-bound-{wwid}", daemon=True)
        watcher.start()
        try:
            yield
        except BaseException:
            done.set()
            watcher.join()
            if stopped.is_set() and self.dm_name(wwid) is not None:
                with contextlib.suppress(Exception):
                    self.restore_queueing(wwid)
            raise
        finally:
            done.set()
            # Its commands are bounded (10 s each): joined, it cannot act on a map a later call makes.
            watcher.join()
            with self._watch_lock:
                self._watched.discard(wwid)

    def wait_for_map(self, wwid: str, devices: Collection[str], timeout: float,
                     nudge_after: float = 3.0) -> Path:
        """Wait until the map exists with every one of devices as a path.

        multipathd builds the map from udev events (remember() first lets it, whatever
        find_multipaths says); if it has not after nudge_after seconds, ask multipath once.
        """
        want = set(devices)
        start = time.monotonic()
        nudged = False
        path = self.map_path(wwid)
        while True:
            # The kernel shows the map and its paths in sysfs as soon as its table is loaded;
            # /dev/mapper/<wwid> comes only after udev has run its rules, hundreds of ms later on a
            # slow node. The caller opens the path next, so only the path's existence ends the wait.
            if want <= set(self.slaves(wwid)) and path.exists():
                return path
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                raise DeadlineExceeded(
                    f"multipath map {wwid} did not appear with paths {sorted(want)} within {timeout:g} s "
                    f"(has {self.slaves(wwid)}, {path} {'exists' if path.exists() else 'absent'}); "
                    "is multipathd running, and udev, and are LIO LUNs not blacklisted (docs/multipath.md)?")
            if not nudged and elapsed > nudge_after:
                nudged = True
                try:
                    self._runner.run([MULTIPATH, wwid], ok_codes=(0, 1), timeout=max(1.0, timeout - elapsed))
                except (CommandFailed, CommandTimedOut) as exc:  # multipathd may still build it
                    log.warning("asking multipath for map %s failed: %s", wwid, exc)
            time.sleep(self._poll)

    def maps_of(self, wwid: str) -> dict[str, list[str]]:
        """Every multipath map of the WWID, whatever it is named (user_friendly_names makes mpathN),
        with its paths: multipathd's maps carry the uuid mpath-<wwid>."""
        found: dict[str, list[str]] = {}
        for dm, name, uuid in self._maps():
            if uuid == f"mpath-{wwid}":
                try:
                    found[name] = sorted(p.name for p in (self._sys / "block" / dm / "slaves").iterdir())
                except OSError:
                    continue  # gone while we looked
        return found

    def all_maps(self) -> dict[str, tuple[str, list[str]]]:
        """Every multipath map on this kernel: name -> (the WWID its uuid carries, its paths)."""
        found: dict[str, tuple[str, list[str]]] = {}
        for dm, name, uuid in self._maps():
            if uuid.startswith("mpath-"):
                try:
                    found[name] = (uuid.removeprefix("mpath-"),
                                   sorted(p.name for p in (self._sys / "block" / dm / "slaves").iterdir()))
                except OSError:
                    continue  # gone while we looked
        return found

    def is_open(self, name: str) -> bool:
        """Whether anything holds the map open (a mount, a process, a device stacked on it)."""
        dm = self.dm_name(name)
        if dm is None:
            return False
        return self.has_holders(name) or self.open_count(name) > 0

    def has_holders(self, name: str) -> bool:
        """Whether a device is stacked on the map (an LVM LV, a partition map)."""
        dm = self.dm_name(name)
        return dm is not None and any((self._sys / "block" / dm / "holders").glob("*"))

    def open_count(self, name: str) -> int:
        """device-mapper's open count of the map: mounts, processes and stacked devices alike."""
        out = self._runner.run([DMSETUP, "info", "-c", "--noheadings", "-o", "open", name], timeout=10).stdout.strip()
        return int(out) if out.isdigit() else 0

    def maps_over(self, devices: Collection[str]) -> list[str]:
        """Names of the multipath maps built over any of devices (sdX), whatever they are named:
        with user_friendly_names a map over the volume's paths is mpathN, not its WWID."""
        names = set()
        for device in devices:
            try:
                holders = list((self._sys / "block" / device / "holders").iterdir())
            except OSError:
                continue
            for holder in holders:
                name = self._read(holder / "dm" / "name")
                if name and (self._read(holder / "dm" / "uuid") or "").startswith("mpath-"):
                    names.add(name)
        return sorted(names)

    def path_states(self, wwid: str) -> list[PathState]:
        """multipathd's view of the map's paths. Raises CommandFailed if multipathd cannot answer."""
        return self.all_path_states().get(wwid, [])

    def all_path_states(self, timeout: float = 10) -> dict[str, list[PathState]]:
        """multipathd's view of every path, by WWID, from one call."""
        out = self._runner.run([MULTIPATHD, "show", "paths", "raw", "format", "%w %d %t %T"], timeout=timeout).stdout
        states: dict[str, list[PathState]] = {}
        for line in out.splitlines():
            # The checker state may hold a space ("i/o pending"): it is the rest of the line.
            fields = line.split(maxsplit=3)
            if len(fields) == 4:
                states.setdefault(fields[0], []).append(PathState(fields[1], fields[2], fields[3].strip()))
        return states

    def map_states(self) -> dict[str, MapState]:
        """multipathd's view of every map, by WWID, from one call."""
        out = self._runner.run([MULTIPATHD, "show", "maps", "raw", "format", "%w %d %N %t %Q"], timeout=10).stdout
        maps = {}
        for line in out.splitlines():
            # The queueing column may hold a space ("12 chk", "30 sec"): it is the rest of the line.
            fields = line.split(maxsplit=4)
            if len(fields) == 5:
                maps[fields[0]] = MapState(fields[1], int(fields[2]) if fields[2].isdigit() else 0, fields[3],
                                           fields[4].strip())
        return maps

    def size_bytes(self, wwid: str) -> int:
        dm = self.dm_name(wwid)
        if dm is None:
            return 0
        return int((self._sys / "block" / dm / "size").read_text()) * 512

    def resize(self, wwid: str) -> None:
        """Make the map take the size its (rescanned) paths now report."""
        self._runner.run([MULTIPATHD, "resize", "map", wwid], timeout=60)

    def flush(self, wwid: str, *, deadline: float | None = None, delay: float = 1.0) -> None:
        """Flush and remove the map; waits for queued I/O, never drops it. Retries a busy map until
        deadline (a time.monotonic() value; default: 5 retries' worth) and then reports it busy."""
        if deadline is None:
            deadline = time.monotonic() + 5 * delay + 60
        while True:
            if self.dm_name(wwid) is None:
                return
            left = deadline - time.monotonic()
            try:
                self._runner.run([MULTIPATH, "-f", wwid], timeout=max(1.0, left))
                return
            except CommandFailed as exc:
                if self.dm_name(wwid) is None:
                    return
                if time.monotonic() + delay >= deadline:
                    raise MapBusy(exc.argv, exc.returncode, exc.stderr, ()) from None
                time.sleep(delay)
