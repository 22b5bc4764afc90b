"""What the node plugin does to a volume on this host: stage (attach + filesystem + mount at the
staging path), publish into a pod (bind mount), and the reverse, in the order that loses no data.
gRPC knows nothing of this module's internals; it only calls these methods."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from csi_iscsi import contract
from csi_iscsi.base.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from csi_iscsi.base.runner import CommandFailed, Runner
from csi_iscsi.chap import Chap
from csi_iscsi.host.api import TargetInfo, VolumeStats
from csi_iscsi.host.attach import Attacher, Attachment
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.iscsiadm import Iscsiadm
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.host.stage_state import STAGED, StageState, StageStateStore

log = logging.getLogger(__name__)


class NodeVolumes:
    def __init__(self, runner: Runner, iscsiadm: Iscsiadm, scsi: Scsi, multipath: Multipath | None,
                 attacher: Attacher, single_path_attacher: Attacher, fs: Filesystems, states: StageStateStore,
                 multipath_mode: str = "required") -> None:
        self._runner = runner
        self._iscsiadm = iscsiadm
        self._scsi = scsi
        self._multipath = multipath
        self._attacher = attacher
        self._single = single_path_attacher
        self._fs = fs
        self._states = states
        self._mode = multipath_mode

    # Stage -----------------------------------------------------------------------------------

    def _use_multipath(self) -> bool:
        if self._mode == "off" or self._multipath is None:
            return False
        running = self._runner.run(["multipathd", "show", "daemon"], ok_codes=(0, 1), timeout=10).returncode == 0
        if running:
            return True
        if self._mode == "required":
            raise FailedPrecondition("multipathd is not running on this node and --multipath=required; start "
                                     "multipathd (with find_multipaths no) or run the node plugin with "
                                     "--multipath=preferred")
        log.warning("multipathd is not running: attaching over one path only (--multipath=preferred)")
        return False

    def stage(self, volume_id: str, target: TargetInfo, staging_path: str, access_type: str, fs_type: str,
              mount_flags: list[str], chap: Chap | None) -> None:
        state = self._states.get(volume_id)
        if state is not None and state.phase == STAGED:
            if state.staging_path != staging_path or state.access_type != access_type:
                raise AlreadyExists(f"volume {volume_id} is already staged at {state.staging_path} as "
                                    f"{state.access_type}")
            if access_type == "block" or self._fs.source_of(staging_path) == state.device:
                return  # already staged: idempotent
        state = StageState(volume_id, target.iqn, target.portals, target.lun, target.wwid, staging_path,
                           access_type, fs_type)
        self._states.put(state)  # before the first login: a crash from here on can be unstaged
        if self._use_multipath():
            attachment = self._attacher.attach(target.iqn, target.portals, target.lun, target.wwid, chap)
        else:
            attachment = self._attach_one_path(target, chap)
        state.device = attachment.device
        if access_type == "mount":
            found = self._fs.ensure(attachment.device, fs_type)  # mkfs only on a blank device
            Path(staging_path).mkdir(parents=True, exist_ok=True)
            source = self._fs.source_of(staging_path)
            if source is None:
                self._fs.mount(attachment.device, staging_path, found, mount_flags)
            elif source != attachment.device:
                raise FailedPrecondition(f"{staging_path} already has {source} mounted on it")
        state.phase = STAGED
        self._states.put(state)

    def _attach_one_path(self, target: TargetInfo, chap: Chap | None) -> Attachment:
        """Without multipath, two sessions would give two /dev/sdX for one LUN: log in on one portal."""
        errors = []
        for portal in target.portals:
            try:
                return self._single.attach(target.iqn, [portal], target.lun, target.wwid, chap)
            except Exception as exc:  # try the next portal, report all if none works
                errors.append(f"{portal}: {exc}")
                self._single.detach(target.iqn, target.lun, target.wwid)
        raise FailedPrecondition("no portal could be attached: " + "; ".join(errors))

    def unstage(self, volume_id: str, staging_path: str) -> None:
        """Idempotent, needs no secrets, works without the state file; touches no other volume."""
        state = self._states.get(volume_id)
        self._fs.umount(staging_path)
        iqns = {state.target_iqn} if state else set()
        iqns |= {s.target_iqn for s in self._scsi.iscsi_sessions() if s.target_iqn.endswith(":" + volume_id)}
        wwid = state.wwid if state else ""
        lun = state.lun if state else 0
        for iqn in sorted(iqns):
            self._attacher.detach(iqn, lun, wwid or contract.wwid(volume_id))
        if state is None:
            # No state: still forget node records this volume's target may have left behind.
            for iqn in self._iscsiadm.record_targets():
                if iqn.endswith(":" + volume_id):
                    self._iscsiadm.delete_target_records(iqn)
        self._states.remove(volume_id)  # the staging directory itself is the CO's: left in place

    def staged(self, volume_id: str) -> StageState | None:
        state = self._states.get(volume_id)
        return state if state is not None and state.phase == STAGED else None

    # Publish ---------------------------------------------------------------------------------

    def publish(self, volume_id: str, staging_path: str, target_path: str, access_type: str, readonly: bool) -> None:
        state = self.staged(volume_id)
        if state is None or state.staging_path != staging_path:
            raise FailedPrecondition(f"volume {volume_id} is not staged at {staging_path}; NodeStageVolume first")
        if state.access_type != access_type:
            raise InvalidArgument(f"volume {volume_id} was staged as {state.access_type}, not {access_type}")
        source = state.device if access_type == "block" else staging_path
        mounted = self._fs.mounts_at(target_path)
        if mounted:
            top = mounted[-1]
            if top.readonly != readonly:
                raise AlreadyExists(f"{target_path} is already published with readonly={top.readonly}")
            return  # idempotent: never stack a second mount
        if access_type == "block":
            Path(target_path).parent.mkdir(parents=True, exist_ok=True)
            Path(target_path).touch(exist_ok=True)
        else:
            Path(target_path).mkdir(parents=True, exist_ok=True)
        self._fs.bind(source, target_path, readonly=readonly)

    def unpublish(self, target_path: str) -> None:
        self._fs.umount(target_path)
        path = Path(target_path)
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()

    # Expand and stats ------------------------------------------------------------------------

    def expand(self, volume_id: str, volume_path: str) -> int:
        state = self.staged(volume_id)
        if state is None:
            raise NotFound(f"volume {volume_id} is not staged on this node")
        if not os.path.exists(volume_path):
            raise NotFound(f"{volume_path} does not exist")
        sessions = [s for s in self._scsi.iscsi_sessions() if s.target_iqn == state.target_iqn]
        paths = [d.name for s in sessions for d in self._scsi.devices(s.sid, state.lun)]
        for path in paths:
            self._scsi.rescan(path)
        if self._multipath is not None and state.device.startswith("/dev/mapper/"):
            self._multipath.resize(state.wwid)
            size = self._multipath.size_bytes(state.wwid)
        else:
            size = self._scsi.size_bytes(paths[0]) if paths else 0
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

    def _condition(self, state: StageState) -> tuple[bool, str]:
        if not os.path.exists(state.device):
            return True, f"device {state.device} is gone"
        if self._multipath is None or not state.device.startswith("/dev/mapper/"):
            return False, "single path, device present"
        try:
            out = self._runner.run(["multipathd", "show", "paths", "raw", "format", "%w %d %t %T"],
                                   timeout=10).stdout
        except CommandFailed as exc:
            return True, f"multipathd cannot report paths: {exc}"
        paths = [line.split() for line in out.splitlines() if line.startswith(state.wwid)]
        bad = [p[1] for p in paths if len(p) >= 4 and (p[2] != "active" or p[3] != "ready")]
        if not paths:
            return True, "multipathd reports no paths for the volume"
        if bad:
            return True, f"{len(bad)} of {len(paths)} paths are down: {', '.join(bad)}"
        return False, f"all {len(paths)} paths active"


