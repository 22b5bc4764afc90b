"""dm-multipath maps, named by WWID (user_friendly_names no), assembled by multipathd."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from csi_iscsi.base.errors import DeadlineExceeded
from csi_iscsi.base.runner import CommandFailed, CommandTimedOut, Runner

log = logging.getLogger(__name__)

MULTIPATH = "multipath"
MULTIPATHD = "multipathd"


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


class Multipath:
    def __init__(self, runner: Runner, *, dev: Path = Path("/dev"), sysfs: Path = Path("/sys"),
                 poll_interval: float = 0.05) -> None:
        self._runner = runner
        self._dev = dev
        self._sys = sysfs
        self._poll = poll_interval

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

    def wait_for_map(self, wwid: str, devices: Collection[str], timeout: float,
                     nudge_after: float = 3.0) -> Path:
        """Wait until the map exists with every one of devices as a path.

        multipathd builds the map from udev events; if it has not after nudge_after seconds
        (say the node's multipath.conf wants find_multipaths strict), ask multipath once.
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
                    "is multipathd running with find_multipaths no, and udev?")
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
        out = self._runner.run([MULTIPATHD, "show", "paths", "raw", "format", "%w %d %t %T"], timeout=10).stdout
        states = []
        for line in out.splitlines():
            # The checker state may hold a space ("i/o pending"): it is the rest of the line.
            fields = line.split(maxsplit=3)
            if len(fields) == 4 and fields[0] == wwid:
                states.append(PathState(fields[1], fields[2], fields[3].strip()))
        return states

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
