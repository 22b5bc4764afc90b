"""`csi-iscsi doctor` on a worker: what no stage state owns, found from the host (sysfs, iscsiadm's
records, device-mapper, mountinfo), and with --fix cleared in the safe detach order.

Ownership is the stage state: the plugin writes a volume's state before its first login and
removes it only after the detach, so a session, record or map of the driver's targets (IQNs
ending in a volume id) without one is left by a crash between those points or made by hand.
Every fix runs under the volume's lock, which the running plugin shares (an flock per volume),
and looks again under it: a volume staged meanwhile is left alone. Nothing in use (mounted, held
open) is ever detached or flushed. Reads only unless --fix."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from csi_iscsi import contract
from csi_iscsi.base.errors import Aborted, CsiIscsiError
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.base.runner import Runner
from csi_iscsi.host.iscsiadm import EXIT_NO_OBJS_FOUND, ISCSIADM
from csi_iscsi.host.mounts import MountTable
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.node_volumes import NodeVolumes
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.host.stage_state import STAGED, StageState, StageStateStore
from csi_iscsi.ops.findings import Finding

# udev's workers (and the blkid it runs) open every new or changed block device to probe it.
UDEV_WORKERS = ("(udev-worker)", "systemd-udevd", "udevd", "blkid")

# What each kind of finding is, for the text output and docs/operations.md.
SESSION, RECORD, MAP, STATE, MOUNT, IFACE = "session", "record", "map", "state", "mount", "iface"


def parse_records(text: str) -> list[tuple[str, str, str]]:
    """`iscsiadm -m node -P 1`: a "Target:" line, its "Portal: ip:port,tpgt" lines, and under each
    portal an "Iface Name:" line per record."""
    iqn = portal = ""
    found = []
    for raw in text.splitlines():
        key, _, value = raw.strip().partition(":")
        if key == "Target":
            iqn = value.strip()
        elif key == "Portal":
            portal = value.strip().rsplit(",", 1)[0]
        elif key == "Iface Name" and iqn and portal:
            found.append((iqn, portal, value.strip()))
    return found


class NodeDoctor:
    def __init__(self, state_dir: Path, runner: Runner, *, initiator: str = "", iface: str = "",
                 sysfs: Path = Path("/sys"), dev: Path = Path("/dev"),
                 mountinfo: Path = Path("/proc/self/mountinfo"), proc: Path = Path("/proc")) -> None:
        """initiator: this node's initiator name (sessions presenting another are another node's,
        on a shared iscsid); iface: the iface record the plugin binds this node's records to."""
        self._volumes_dir = state_dir / "node" / "volumes"
        self._locks_dir = state_dir / "node" / "locks"
        self._proc = proc
        self._sys = sysfs
        self._states = StageStateStore(self._volumes_dir, readonly=True)
        self._runner = runner
        self._initiator = initiator.lower()
        self._iface = iface
        self._scsi = Scsi(sysfs)
        self._multipath = Multipath(runner, dev=dev, sysfs=sysfs)
        self._mounts = MountTable(mountinfo)

    def _owned(self) -> set[str]:
        """Every volume with a state file, readable or not: one that cannot be parsed is still owned."""
        if not self._volumes_dir.is_dir():
            return set()
        return {p.stem for p in self._volumes_dir.glob("*.json") if contract.is_volume_id(p.stem)}

    def _records(self) -> list[tuple[str, str, str]]:
        """(target IQN, portal, iface) of every node record on this host, from one listing."""
        out = self._runner.run([ISCSIADM, "-m", "node", "-P", "1"], ok_codes=(0, EXIT_NO_OBJS_FOUND),
                               timeout=30).stdout
        return parse_records(out)

    def _mine(self, iface: str) -> bool:
        """A record this node judges: on its own iface, or the default one (made by hand). Records on
        another csi- iface are another node's, on a shared iscsid."""
        return not self._iface or iface in (self._iface, "default")

    def find(self) -> list[Finding]:
        owned = self._owned()
        states = self._states.all()
        owned_wwids = {s.wwid for s in states} | {contract.wwid(v) for v in owned}
        sessions = [s for s in self._scsi.iscsi_sessions()
                    if not self._initiator or s.initiator in ("", self._initiator)]
        findings: list[Finding] = []
        orphan_sessions = set()
        for s in sessions:
            vid = contract.volume_id_of(s.target_iqn)
            if vid and vid not in owned:
                orphan_sessions.add(s.target_iqn)
                findings.append(Finding(SESSION, f"session {s.sid} to {s.target_iqn} on {s.portal} ({s.state})", vid,
                                        "no stage state names its volume (logged in by hand, or left by a crash "
                                        "after a detach began)",
                                        "detach the volume's target: map, SCSI devices, sessions, node records"))
        records = self._records()
        for iqn, portal, iface in records:
            vid = contract.volume_id_of(iqn)
            if vid and vid not in owned and iqn not in orphan_sessions and self._mine(iface):
                findings.append(Finding(RECORD, f"node record of {iqn} on {portal} (iface {iface})", vid,
                                        "no stage state names its volume and no session uses it",
                                        "delete the volume's node records"))
        staged_here = self._staged_here()
        for name, (wwid, slaves) in sorted(self._multipath.all_maps().items()):
            vid = staged_here.get(wwid, "")
            # Only the map of a volume the driver has staged on this node (it has a lock file here):
            # every LIO LUN's WWID starts alike, and another LIO disk's map is not ours to flush.
            if not vid or wwid in owned_wwids or slaves:
                continue
            findings.append(Finding(MAP, name, vid,
                                    "the map of a volume once staged here, with no paths and no stage state (what "
                                    "a detach cut short, or multipathd rebuilding a map during one, leaves)",
                                    "flush it, unless something holds it open"))
        for state in states:
            finding = self._state_finding(state, records)
            if finding is not None:
                findings.append(finding)
        for mount in self._mounts.all():
            wwid = mount.source.removeprefix("/dev/mapper/")
            if mount.source.startswith("/dev/mapper/" + contract.LIO_WWID_PREFIX) and wwid not in owned_wwids:
                findings.append(Finding(MOUNT, f"{mount.source} mounted at {mount.target}", "",
                                        "an LIO LUN's map mounted where no stage state says",
                                        ""))
        if self._iface and not any(iface == self._iface for _, _, iface in records):
            listing = self._runner.run([ISCSIADM, "-m", "iface"], ok_codes=(0, EXIT_NO_OBJS_FOUND), timeout=30).stdout
            if self._iface in {line.split()[0] for line in listing.splitlines() if line.strip()}:
                findings.append(Finding(IFACE, f"iface record {self._iface}", "",
                                        "no node record uses it (the plugin deletes it after the last detach; a "
                                        "crash can leave it)",
                                        ""))
        return findings

    def _staged_here(self) -> dict[str, str]:
        """WWID -> volume id of every volume the driver has staged on this node (a lock file each)."""
        try:
            names = [p.name.removesuffix(".lock") for p in self._locks_dir.glob("*.lock")]
        except OSError:
            return {}
        return {contract.wwid(v): v for v in names if contract.is_volume_id(v)}

    def _behind(self, state: StageState, records: list[tuple[str, str, str]]) -> list[str]:
        """What the host holds of a state's volume."""
        held = [f"session {s.sid}" for s in self._scsi.iscsi_sessions() if s.target_iqn == state.target_iqn]
        held += [f"record {p}" for iqn, p, _ in records if iqn == state.target_iqn]
        held += [f"map {name}" for name in self._multipath.maps_of(state.wwid)]  # by any name
        held += [f"device {d}" for d in self._scsi.devices_with(state.wwid)]
        held += [f"mount {m.target}" for m in self._mounts.at(state.staging_path)]
        return held

    def _state_finding(self, state: StageState, records: list[tuple[str, str, str]]) -> Finding | None:
        if state.mkfs_started:
            return None  # kept on purpose: it lets the next stage finish a mkfs that was cut short
        if self._behind(state, records):
            return None
        path = str(self._volumes_dir / f"{state.volume_id}.json")
        if state.phase == STAGED:
            return Finding(STATE, path, state.volume_id,
                           "staged, and nothing of the volume is on the host (a reboot): kubelet's next "
                           "NodeStageVolume attaches it again, its NodeUnstageVolume clears the state", "")
        return Finding(STATE, path, state.volume_id,
                       f"{state.phase} (a stage or unstage that failed and was not retried) with nothing of the "
                       "volume on the host", "remove the state file")

    def fix(self, findings: list[Finding], volumes: NodeVolumes, locks: VolumeLocks,
            states: StageStateStore) -> list[Finding]:
        """Clear what find() reported, each under its volume's lock and after looking again; returns
        the findings with their result. A failure on one finding is its result, not the end."""
        done: list[Finding] = []
        detached: dict[str, str] = {}
        for f in findings:
            if not f.fix:
                done.append(replace(f, result="reported only"))
            elif f.kind in (SESSION, RECORD):
                if f.volume_id not in detached:
                    detached[f.volume_id] = self._guarded(f.volume_id, locks, partial(self._detach, f, volumes))
                done.append(replace(f, result=detached[f.volume_id]))
            elif f.kind == MAP:
                done.append(replace(f, result=self._guarded(f.volume_id, locks, partial(self._flush, f))))
            elif f.kind == STATE:
                remove = partial(self._remove_state, f, states)
                done.append(replace(f, result=self._guarded(f.volume_id, locks, remove)))
        return done

    @staticmethod
    def _guarded(volume_id: str, locks: VolumeLocks, action: Callable[[], str]) -> str:
        try:
            with locks.hold(volume_id, "csi-iscsi doctor"):
                return action()
        except Aborted:
            return "left: the node plugin is working on the volume"
        except (CsiIscsiError, OSError, ValueError) as exc:
            return f"left: {type(exc).__name__}: {exc}" if isinstance(exc, OSError) else f"left: {exc}"

    def _detach(self, finding: Finding, volumes: NodeVolumes) -> str:
        volume_id = finding.volume_id
        if volume_id in self._owned():
            return "left: the volume was staged meanwhile"
        users = self._open_users(volume_id)
        if users:
            return f"left: in use ({'; '.join(users[:5])})"
        volumes.detach_unowned(volume_id)
        return "cleared"

    def _open_users(self, volume_id: str) -> list[str]:
        """Who has the volume's devices (its paths on this node's sessions, their maps) open. A
        user that opens a device without O_EXCL (a database or VM on a raw device) shows in no
        holder and no mount: the processes' open files are read too. multipathd's own path
        checkers are not users."""
        iqn_suffix = ":" + volume_id
        paths = [d.name for s in self._scsi.iscsi_sessions()
                 if s.target_iqn.endswith(iqn_suffix) and (not self._initiator or s.initiator in ("", self._initiator))
                 and self._scsi.session_exists(s.sid) for d in self._scsi.devices(s.sid)]
        maps = sorted({contract.wwid(volume_id), *self._multipath.maps_over(paths)})
        users = [f"map {m} is open" for m in maps if self._multipath.is_open(m)]
        return users + self._processes_with(self._numbers(
            [*paths, *(dm for dm in (self._multipath.dm_name(m) for m in maps) if dm)]))

    def _numbers(self, names: list[str]) -> dict[str, str]:
        """major:minor -> name of these block devices (sdX, dm-N), as sysfs has them now."""
        numbers = {}
        for name in names:
            try:
                numbers[(self._sys / "block" / name / "dev").read_text().strip()] = name
            except OSError:
                continue  # gone meanwhile
        return numbers

    def _processes_with(self, numbers: dict[str, str]) -> list[str]:
        """'<device> open by <comm> (pid N)' for every process but multipathd with one of the
        devices (major:minor -> name) open. Only descriptors that name something under /dev are
        looked at (a stat of any other could hang on a dead network mount), and a process whose
        descriptors cannot be read counts as a user: what cannot be told is never "not in use"."""
        if not numbers:
            return []
        found = []
        for pid_dir in self._proc.glob("[0-9]*"):
            if pid_dir.name == str(os.getpid()):
                continue
            try:
                comm = (pid_dir / "comm").read_text().strip()
            except OSError:
                continue  # gone
            if comm == "multipathd":
                continue
            try:
                fds = list((pid_dir / "fd").iterdir())
            except FileNotFoundError:
                continue
            except OSError as exc:
                found.append(f"the open files of {comm} (pid {pid_dir.name}) cannot be read ({exc.strerror})")
                continue
            for fd in fds:
                try:
                    if not os.readlink(fd).startswith("/dev/"):
                        continue
                    st = fd.stat()
                except OSError:
                    continue
                if stat.S_ISBLK(st.st_mode):
                    key = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                    if key in numbers:
                        found.append(f"{numbers[key]} open by {comm} (pid {pid_dir.name})")
        return sorted(set(found))

    def _flush(self, finding: Finding) -> str:
        """A pathless map queues what is read or written to it for as long as its no_path_retry
        says, often for ever: a udev probe that opened it after its last path went hangs there and
        keeps it open. When nothing but such probes holds it (no stacked device, no mount, every
        open accounted for by udev's workers), its queueing is stopped so the probes fail, and it
        is flushed; whatever else holds it leaves it as it is, queueing included."""
        name = finding.subject
        maps = self._multipath.all_maps()
        if name not in maps:
            return "cleared (gone meanwhile)"
        wwid, slaves = maps[name]
        if slaves or finding.volume_id in self._owned():
            return "left: the map has paths or a stage state now"
        dm = self._multipath.dm_name(name)
        numbers = self._numbers([dm] if dm else [])
        openers = self._processes_with(numbers)
        users = [u for u in openers if " open by " not in u or not u.split(" open by ", 1)[1].startswith(UDEV_WORKERS)]
        if users:
            return f"left: in use ({'; '.join(users[:5])})"
        mounted = [m.target for m in self._mounts.all() if m.major_minor in numbers]
        if self._multipath.has_holders(name) or mounted:
            return f"left: a device is stacked on the map or it is mounted ({', '.join(mounted) or 'holders'})"
        opened = self._multipath.open_count(name)
        if opened > len(openers):
            return f"left: opened {opened} times, {len(openers)} of them by processes doctor can see"
        stopped = False
        try:
            if opened:
                stopped = self._multipath.stop_queueing(name)
                deadline = time.monotonic() + 10
                while self._multipath.open_count(name):
                    if time.monotonic() > deadline:
                        return "left: something holds the map open"
                    time.sleep(0.5)
            self._multipath.flush(name, deadline=time.monotonic() + 10)
            stopped = False
        finally:
            if stopped and self._multipath.dm_name(name) is not None:
                self._multipath.restore_queueing(name)  # left as it was found
        if not self._scsi.devices_with(wwid):
            self._multipath.forget(wwid)  # its wwids line would let multipathd build it again
        return "cleared"

    def _remove_state(self, finding: Finding, states: StageStateStore) -> str:
        state = states.get(finding.volume_id)
        if state is None:
            return "cleared (gone meanwhile)"
        again = self._state_finding(state, self._records())
        if again is None or not again.fix:
            return "left: the volume changed meanwhile"
        states.remove(finding.volume_id)
        return "cleared"
