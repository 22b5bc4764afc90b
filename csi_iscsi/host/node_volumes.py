"""What the node plugin does to a volume on this host: stage (attach + filesystem + mount at the
staging path), publish into a pod (bind mount), and the reverse, in the order that loses no data.
Stage and publish are transactions: a call that fails undoes what it did before it returns, since
kubelet never calls the reverse RPC after a final error. Fault points (csi_iscsi.base.faults) sit
between the steps; docs/failure-modes.md says what each leaves and what converges it. gRPC knows
nothing of this module's internals; it only calls these methods."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path

from csi_iscsi import contract
from csi_iscsi.base.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from csi_iscsi.base.faults import fault_point
from csi_iscsi.base.runner import CommandFailed, CommandTimedOut, Runner
from csi_iscsi.chap import Chap
from csi_iscsi.host.api import PathHealth, Repair, TargetInfo, VolumeStats
from csi_iscsi.host.attach import Attacher, Attachment
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.iscsiadm import Iscsiadm
from csi_iscsi.host.mounts import Mount
from csi_iscsi.host.multipath import Multipath, PathState, bad_paths, paths_condition
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.host.stage_state import ATTACHING, STAGED, UNSTAGING, StageState, StageStateStore

log = logging.getLogger(__name__)


class NodeVolumes:
    def __init__(self, runner: Runner, iscsiadm: Iscsiadm, scsi: Scsi, multipath: Multipath | None,
                 attacher: Attacher, single_path_attacher: Attacher, fs: Filesystems, states: StageStateStore,
                 multipath_mode: str = "required", maps: Multipath | None = None) -> None:
        self._runner = runner
        self._iscsiadm = iscsiadm
        self._scsi = scsi
        self._multipath = multipath
        self._maps = maps if maps is not None else multipath  # a map multipathd built over one path too
        self._attacher = attacher
        self._single = single_path_attacher
        self._fs = fs
        self._states = states
        self._mode = multipath_mode
        # CHAP secrets of the volumes staged by this process, for self-heal to make a lost node
        # record again: in memory only, never on disk (a restart forgets them).
        self._chaps: dict[str, Chap] = {}

    # Stage -----------------------------------------------------------------------------------

    def _use_multipath(self) -> bool:
        if self._mode == "off" or self._multipath is None:
            return False
        running = self._runner.run(["multipathd", "show", "daemon"], ok_codes=(0, 1), timeout=10).returncode == 0
        if running:
            return True
        if self._mode == "required":
            raise FailedPrecondition("multipathd is not running on this node and --multipath=required; start "
                                     "multipathd (docs/multipath.md) or run the node plugin with "
                                     "--multipath=preferred")
        log.warning("multipathd is not running: attaching over one path only (--multipath=preferred)")
        return False

    def _is_volume_device(self, device: str, wwid: str, lun: int, target_iqn: str) -> bool:
        """device exists, carries the volume's WWID, and at least one of its paths sits on a
        logged-in session of the volume's target: what "attached" means after a reboot or a rescan,
        when a recorded /dev/sdX may name another LUN or a local disk."""
        if not device or not os.path.exists(device):
            return False
        live = set(self._attacher.live_paths(target_iqn, lun))
        if self._multipath is not None and device == str(self._multipath.map_path(wwid)):
            paths = self._multipath.slaves(wwid)
            return bool(paths) and all(self._scsi.wwid(p) == wwid for p in paths) and bool(live & set(paths))
        name = os.path.basename(os.path.realpath(device))
        return self._scsi.wwid(name) == wwid and name in live

    def _on_map(self, state: StageState) -> bool:
        return self._multipath is not None and state.device == str(self._multipath.map_path(state.wwid))

    def _still_staged(self, state: StageState) -> bool:
        if not self._is_volume_device(state.device, state.wwid, state.lun, state.target_iqn):
            return False
        return state.access_type == "block" or self._fs.mounted_from(state.staging_path, state.device)

    def stage(self, volume_id: str, target: TargetInfo, staging_path: str, access_type: str, fs_type: str,
              mount_flags: list[str], chap: Chap | None) -> None:
        """Attach, make the filesystem if the device is proven blank, mount; a transaction: when any
        step fails, what this call did is undone before the error returns (kubelet calls no
        NodeUnstage after a final NodeStage error), except an attachment something uses."""
        known = self._states.get(volume_id)
        if known is not None and known.phase == STAGED:
            if known.staging_path != staging_path or known.access_type != access_type:
                raise AlreadyExists(f"volume {volume_id} is already staged at {known.staging_path} as "
                                    f"{known.access_type}")
            if self._still_staged(known):
                if chap is not None:
                    self._chaps[volume_id] = chap  # a restarted plugin learns the secret again here
                return  # idempotent, and proven: the device is the volume's and a session carries it
            log.info("volume %s is recorded as staged but its device %r is not attached any more (a reboot?); "
                     "attaching it again", volume_id, known.device)
        # A mkfs this volume's last stage started and never finished (a crash, a timeout) may be re-run:
        # nothing but that mkfs has written to the device since it was proven blank.
        resume_mkfs = (known is not None and known.mkfs_started and known.access_type == access_type == "mount"
                       and known.fs_type == fs_type)
        state = StageState(volume_id, target.iqn, target.portals, target.lun, target.wwid, staging_path,
                           access_type, fs_type, mkfs_started=resume_mkfs,
                           authentication="none" if chap is None else "chap")
        self._chaps.pop(volume_id, None)
        self._states.put(state)  # before the first login: a crash from here on can be unstaged
        mounted_here = False
        try:
            fault_point("stage.after_state")
            if self._use_multipath():
                attachment = self._attacher.attach(target.iqn, target.portals, target.lun, target.wwid, chap)
            else:
                attachment = self._attach_one_path(volume_id, state, target, chap)
            state = replace(state, device=attachment.device)
            self._states.put(state)
            if access_type == "mount":
                def mkfs_starts() -> None:
                    self._states.put(replace(state, mkfs_started=True))

                # mkfs only on a device proven blank
                found, made = self._fs.ensure(attachment.device, fs_type, on_mkfs=mkfs_starts,
                                              resume_mkfs=resume_mkfs)
                if made or resume_mkfs:
                    state = replace(state, mkfs_started=False)
                    self._states.put(state)
                fault_point("stage.after_mkfs")
                Path(staging_path).mkdir(parents=True, exist_ok=True)
                if not self._fs.is_mounted(staging_path):
                    self._fs.mount(attachment.device, staging_path, found, mount_flags)
                    mounted_here = True
                elif not self._fs.mounted_from(staging_path, attachment.device):
                    raise FailedPrecondition(f"{staging_path} already has {self._fs.source_of(staging_path)} "
                                             "mounted on it")
                if not made:
                    # Also when a retried stage finds it mounted: a crash may have come before the grow.
                    self._grow_restored(volume_id, attachment.device, found, staging_path, mount_flags)
                fault_point("stage.after_mount")
            self._states.put(replace(state, phase=STAGED))
            if chap is not None:
                self._chaps[volume_id] = chap
        except BaseException:
            try:
                latest = self._states.get(volume_id) or state
            except Exception:
                latest = state
            self._undo_stage(latest, mounted_here, known)
            raise

    def _grow_restored(self, volume_id: str, device: str, fstype: str, staging_path: str,
                       mount_flags: list[str]) -> None:
        """A filesystem smaller than its device (made from a smaller snapshot or volume) is grown
        before the stage answers. A grow that timed out fails the stage, which is undone, and
        kubelet's retry tries again. One the filesystem refuses (an ext4 with its error flag set,
        say) would refuse every retry too: the volume is staged at its size, and the refusal is
        logged. A read-only mount or LUN is left at its size."""
        if "ro" in mount_flags:
            return
        try:
            grown = self._fs.grow_to_device(device, fstype, staging_path)
        except CommandTimedOut as exc:
            raise Internal(f"volume {volume_id}: growing its {fstype} filesystem to the device (it was made from a "
                           f"smaller snapshot or volume) timed out ({exc}); the stage was undone, and kubelet's "
                           "retry tries again") from exc
        except CommandFailed as exc:
            log.error("volume %s: its %s filesystem is smaller than the device (made from a smaller snapshot or "
                      "volume) and the grow was refused (%s); staged at its present size. Check the filesystem "
                      "(fsck), then NodeExpandVolume or a restage grows it", volume_id, fstype, exc)
            return
        if grown:
            log.info("volume %s: its %s filesystem was smaller than the device (made from a smaller snapshot or "
                     "volume); grown to the device", volume_id, fstype)

    def _undo_stage(self, state: StageState, mounted_here: bool, known: StageState | None) -> None:
        """Undo a failed stage: unmount what this call mounted, detach the volume unless something
        uses it; a volume in use is left as it was, with its earlier state."""
        try:
            if mounted_here:
                self._fs.umount(state.staging_path)
            self._detach(state.volume_id, state, known)
        except Exception as exc:
            log.error("a failed NodeStageVolume of %s was not undone (%s); what is left stays recorded in its stage "
                      "state, and NodeUnstageVolume (or the next NodeStageVolume) clears it", state.volume_id, exc)
            if known is not None:
                with contextlib.suppress(Exception):
                    self._states.put(known)

    def _attach_one_path(self, volume_id: str, state: StageState, target: TargetInfo, chap: Chap | None) -> Attachment:
        """Without multipath, two sessions would give two /dev/sdX for one LUN: log in on one portal."""
        errors = []
        for portal in target.portals:
            try:
                return self._single.attach(target.iqn, [portal], target.lun, target.wwid, chap)
            except Exception as exc:  # try the next portal, report all if none works
                errors.append(f"{portal}: {exc}")
                users = self._users(volume_id, state)
                if users:
                    # Something of this volume is in use (a session in recovery, say): never detach it.
                    raise FailedPrecondition(f"no portal could be attached ({'; '.join(errors)}), and the volume's "
                                             f"devices are in use ({'; '.join(users)})") from None
                try:
                    self._single.detach(target.iqn, target.lun, target.wwid)
                except Exception as cleanup:
                    log.warning("cleaning up after the failed login on %s: %s", portal, cleanup)
        raise FailedPrecondition("no portal could be attached: " + "; ".join(errors))

    def _target_iqns(self, volume_id: str, *states: StageState | None) -> set[str]:
        iqns = {s.target_iqn for s in states if s is not None}
        iqns |= {s.target_iqn for s in self._attacher.sessions() if s.target_iqn.endswith(":" + volume_id)}
        return iqns

    def _users(self, volume_id: str, *states: StageState | None) -> list[str]:
        """Everything that uses any device of the volume on this host: its map, every path on every
        session of its target, and the devices the states record."""
        recorded = [s for s in states if s is not None]
        wwid = recorded[0].wwid if recorded else contract.wwid(volume_id)
        lun = recorded[0].lun if recorded else 0
        devices = {s.device for s in recorded if s.device}
        iqns = self._target_iqns(volume_id, *recorded)
        paths = [d.name for s in self._attacher.sessions() if s.target_iqn in iqns
                 for d in self._scsi.devices(s.sid, lun)]
        devices |= {f"/dev/{p}" for p in paths}
        own: list[str] = []
        if self._maps is not None:
            # The volume's maps: named by its WWID, or (user_friendly_names) whatever holds its paths.
            for name in {wwid, *self._maps.maps_over(paths)}:
                dm = self._maps.dm_name(name)
                if dm:
                    own.append(dm)
                    node = self._maps.map_path(name)
                    devices.add(str(node) if node.exists() else f"/dev/{dm}")  # udev may lag behind the map
        return [f"{device} {why}" for device in sorted(devices) for why in self._fs.users(device, allowed_holders=own)]

    def _detach(self, volume_id: str, state: StageState | None, known: StageState | None = None) -> None:
        """The safe detach of everything of the volume's target on this host (sessions, devices, map,
        node records), then its stage state; refused while any of its devices is mounted or held."""
        users = self._users(volume_id, state, known)
        if users:
            shown = "; ".join(users[:5]) + (f"; and {len(users) - 5} more" if len(users) > 5 else "")
            raise FailedPrecondition(f"volume {volume_id} is in use ({shown}); not detaching it")
        wwid = state.wwid if state else contract.wwid(volume_id)
        lun = state.lun if state else 0
        for iqn in sorted(self._target_iqns(volume_id, state, known)):
            self._attacher.detach(iqn, lun, wwid)
        if state is None:
            # No state: still forget node records this volume's target may have left behind.
            for iqn in self._iscsiadm.record_targets():
                if iqn.endswith(":" + volume_id):
                    self._attacher.delete_records(iqn)
        if state is not None and state.mkfs_started:
            # A mkfs was cut short: keep that fact (and nothing else) for the next stage, or the volume
            # would be refused as "not blank" for ever.
            self._states.put(replace(state, device="", phase=ATTACHING))
        else:
            self._states.remove(volume_id)

    def unstage(self, volume_id: str, staging_path: str) -> None:
        """Idempotent, needs no secrets, works without the state file; touches no other volume."""
        self._chaps.pop(volume_id, None)
        state = self._states.get(volume_id)
        wwid = state.wwid if state is not None else contract.wwid(volume_id)
        guard = (self._maps.queueing_bounded(wwid, self._attacher.queueing_grace)
                 if self._maps is not None and self._maps.dm_name(wwid) is not None else contextlib.nullcontext())
        # umount writes the filesystem's dirty data back: with the target dead or this node fenced it
        # would wait on multipath's queueing as long as that lasts, so the bound covers it too.
        with guard:
            self._fs.umount(staging_path)
            if state is not None and state.phase != UNSTAGING:
                # From here the volume is not mounted where a publish would look: refuse publishes even
                # if the detach below fails (a busy map) and the state stays.
                self._states.put(replace(state, phase=UNSTAGING))
            fault_point("unstage.after_umount")
            self._detach(volume_id, state)  # the staging directory itself is the CO's: left in place

    def detach_unowned(self, volume_id: str) -> None:
        """csi-iscsi doctor --fix: the safe detach of a volume's target that no stage state names
        (a session logged in by hand, what a crash between the detach and the state's removal
        left). The caller holds the volume's lock; refused while the volume has a state, or any of
        its devices is mounted or held."""
        if self._states.get(volume_id) is not None:
            raise FailedPrecondition(f"volume {volume_id} has a stage state: NodeUnstageVolume is what detaches it")
        self._detach(volume_id, None)

    def staged(self, volume_id: str) -> StageState | None:
        state = self._states.get(volume_id)
        return state if state is not None and state.phase == STAGED else None

    # Self-heal -------------------------------------------------------------------------------

    def _healable(self, state: StageState | None) -> bool:
        """Only a volume staged on its multipath map, with the map there, is healed: a single path
        cannot be replaced under its mount (a new login is a new /dev/sdX), and a volume whose map
        is gone (a reboot) is NodeStage's to attach again."""
        return (state is not None and state.phase == STAGED and self._multipath is not None and self._on_map(state)
                and self._multipath.dm_name(state.wwid) is not None)

    def heal_gaps(self, volume_id: str) -> list[str]:
        """What the volume's attachment lacks (from sysfs, no command)."""
        return self._gaps(self._states.get(volume_id))

    def _gaps(self, state: StageState | None) -> list[str]:
        if state is None or not self._healable(state):
            return []
        return self._attacher.gaps(state.target_iqn, state.portals, state.lun, state.wwid)

    def heal_gaps_all(self) -> dict[str, list[str]]:
        """Every healable volume's gaps (empty when whole), from one read of this node's sessions."""
        states = [s for s in self._states.all() if self._healable(s)]
        if not states:
            return {}
        sessions = self._attacher.sessions()
        every = {}
        for s in states:
            try:
                every[s.volume_id] = self._attacher.gaps(s.target_iqn, s.portals, s.lun, s.wwid, sessions)
            except OSError as exc:  # a session or device going away while sysfs was read: looked at next pass
                log.warning("looking at volume %s for self-heal: %s", s.volume_id, exc)
        return every

    def heal(self, volume_id: str) -> tuple[list[str], list[Repair]]:
        """Repair what heal_gaps finds; the caller holds the volume's lock, so no stage or unstage
        runs meanwhile. Returns the gaps seen and the steps taken."""
        state = self._states.get(volume_id)
        gaps = self._gaps(state)
        if not gaps or state is None:
            return gaps, []
        chap = self._chaps.get(volume_id)
        may_make_records = state.authentication == "none" or chap is not None
        return gaps, self._attacher.repair(state.target_iqn, state.portals, state.lun, state.wwid, chap,
                                           may_make_records)

    # Publish ---------------------------------------------------------------------------------

    def publish(self, volume_id: str, staging_path: str, target_path: str, access_type: str, readonly: bool) -> None:
        state = self.staged(volume_id)
        if state is None or state.staging_path != staging_path:
            raise FailedPrecondition(f"volume {volume_id} is not staged at {staging_path}; NodeStageVolume first")
        if state.access_type != access_type:
            raise InvalidArgument(f"volume {volume_id} was staged as {state.access_type}, not {access_type}")
        if access_type == "block":
            if not self._is_volume_device(state.device, state.wwid, state.lun, state.target_iqn):
                raise FailedPrecondition(f"volume {volume_id} is recorded as staged but {state.device} is not its "
                                         "attached device any more; NodeStageVolume it again")
            source = state.device
        else:
            # Never bind the bare staging directory: a pod would write into the node's disk.
            if not self._fs.mounted_from(staging_path, state.device):
                raise FailedPrecondition(f"volume {volume_id} is not mounted at {staging_path} (found "
                                         f"{self._fs.source_of(staging_path)}); NodeStageVolume it again")
            source = staging_path
        mounted = self._fs.mounts_at(target_path)
        if mounted:
            self._republish(volume_id, state, target_path, mounted[-1], readonly)
            return  # idempotent: never stack a second mount
        target = Path(target_path)
        created = not target.exists()
        if access_type == "block":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
        try:
            fault_point("node_publish.after_mkdir")
            self._fs.bind(source, target_path, readonly=readonly)
            fault_point("node_publish.after_bind")
        except BaseException:
            # Nothing was mounted there when this call began: whatever is now was this call's.
            try:
                self._fs.umount(target_path)
                if created:
                    self._remove_path(target_path)
            except Exception as exc:
                log.error("undoing the failed NodePublishVolume at %s: %s", target_path, exc)
            raise

    def _is_ours(self, state: StageState, top: Mount) -> bool:
        """Whether a mount is a bind of this volume: of its staging mount, or of its device node."""
        if state.access_type == "block":
            return top.root == "/" + os.path.basename(os.path.realpath(state.device))
        staged = self._fs.mounts_at(state.staging_path)
        return bool(staged) and self._fs.same_mount(top, staged[-1])

    def _republish(self, volume_id: str, state: StageState, target_path: str, top: Mount, readonly: bool) -> None:
        if not self._is_ours(state, top):
            raise FailedPrecondition(f"{target_path} already has {top.source} ({top.root}) mounted on it, which is "
                                     f"not volume {volume_id}; unmount it (a stale bind?) and publish again")
        if top.readonly == readonly:
            return
        if readonly:
            # A rw bind where ro was asked: what a crash between a bind and its remount left, or a
            # CO retrying with the same path. Making it read-only narrows access; never the reverse.
            log.warning("%s is published read-write, read-only is asked for: remounting it read-only", target_path)
            self._fs.remount_readonly(target_path)
            return
        raise AlreadyExists(f"{target_path} is already published read-only; volume {volume_id} cannot be "
                            "published read-write there")

    def unpublish(self, target_path: str) -> None:
        self._fs.umount(target_path)
        fault_point("node_unpublish.after_umount")
        self._remove_path(target_path)

    @staticmethod
    def _remove_path(target_path: str) -> None:
        path = Path(target_path)
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()

    # Expand and stats ------------------------------------------------------------------------

    def expand(self, volume_id: str, volume_path: str, required_bytes: int = 0) -> int:
        state = self.staged(volume_id)
        if state is None:
            raise NotFound(f"volume {volume_id} is not staged on this node")
        if not os.path.exists(volume_path):
            raise NotFound(f"{volume_path} does not exist")
        sessions = self._attacher.sessions(state.target_iqn)
        paths = [d.name for s in sessions for d in self._scsi.devices(s.sid, state.lun)]
        if not paths:
            raise Unavailable(f"volume {volume_id} has no SCSI path on this node to rescan; its sessions are down?")
        for path in paths:
            self._scsi.rescan(path)
        fault_point("node_expand.after_rescan")
        multipath = self._multipath
        if multipath is not None and self._on_map(state):
            multipath.resize(state.wwid)
            fault_point("node_expand.after_resize")
            size = multipath.size_bytes(state.wwid)
        else:
            size = self._scsi.size_bytes(paths[0])
        if size < required_bytes:
            raise Unavailable(f"volume {volume_id}'s device has {size} bytes after the rescan, {required_bytes} were "
                              "asked for: the target has not grown the LUN yet (ControllerExpandVolume first)")
        if state.access_type == "mount":
            self._fs.grow(state.device, state.fs_type, state.staging_path)
        return size

    def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        state = self.staged(volume_id)
        if state is None:
            raise NotFound(f"volume {volume_id} is not staged on this node")
        if not os.path.exists(volume_path):
            raise NotFound(f"{volume_path} does not exist")
        abnormal, message = self._condition(state)
        if state.access_type == "block":
            size = self._device_size(state)
            return VolumeStats(size, 0, 0, 0, 0, 0, abnormal, message)
        if not self._fs.is_mounted(volume_path):
            raise NotFound(f"volume {volume_id} is not mounted at {volume_path}")
        st = os.statvfs(volume_path)
        total, free, avail = st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize
        return VolumeStats(total, total - free, avail, st.f_files, st.f_files - st.f_ffree, st.f_favail,
                           abnormal, message)

    def _device_size(self, state: StageState) -> int:
        name = os.path.basename(os.path.realpath(state.device))
        try:
            return self._scsi.size_bytes(name)
        except OSError:
            return 0

    def path_health(self) -> list[PathHealth]:
        """Every staged volume's paths and condition, from one multipathd call for all (metrics)."""
        states = [s for s in self._states.all() if s.phase == STAGED]
        every: dict[str, list[PathState]] | None = None
        if self._multipath is not None and any(self._on_map(s) for s in states):
            # Bounded short: a scrape must answer within Prometheus' own timeout. Raises: the scrape
            # then says it could not tell.
            every = self._multipath.all_path_states(timeout=3)
        health = []
        for state in states:
            abnormal, _ = self._condition(state, every)
            if every is not None and self._multipath is not None and self._on_map(state):
                paths = every.get(state.wwid, [])
                down = len(bad_paths(paths, self._multipath.slaves(state.wwid)))
                active = len(paths) - down
                health.append(PathHealth(state.volume_id, len(state.portals), active, down, abnormal))
            else:  # one path: the one portal it logged in on, up while its device runs
                up = self._single_path_state(state) == "running"
                health.append(PathHealth(state.volume_id, 1, int(up), int(not up), abnormal))
        return health

    def session_states(self) -> list[str]:
        """The kernel's state of each of this node's sessions to a target of the driver's form."""
        return [s.state for s in self._attacher.sessions() if contract.volume_id_of(s.target_iqn)]

    def _single_path_state(self, state: StageState) -> str:
        """The SCSI state of a volume used without a map: running, blocked (its session is
        recovering), transport-offline, offline, or gone."""
        if not os.path.exists(state.device):
            return "gone"
        name = os.path.basename(os.path.realpath(state.device))
        return self._scsi.state(name) if name.startswith("sd") else "running"  # a map the node built: no SCSI state

    def _condition(self, state: StageState,
                   every: dict[str, list[PathState]] | None = None) -> tuple[bool, str]:
        if not os.path.exists(state.device):
            return True, f"device {state.device} is gone"
        if self._multipath is None or not self._on_map(state):
            scsi_state = self._single_path_state(state)
            if scsi_state != "running":
                return True, f"the volume's one path is {scsi_state}"
            return False, "single path, device present"
        try:
            paths = every.get(state.wwid, []) if every is not None else self._multipath.path_states(state.wwid)
        except (CommandFailed, CommandTimedOut) as exc:
            return True, f"multipathd cannot report paths: {exc}"
        return paths_condition(len(state.portals), paths, self._multipath.slaves(state.wwid))


