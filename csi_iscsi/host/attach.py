"""Attaching one volume's LUN to this node over all its portals, and detaching it safely.

Attach: one node record per portal (never discovery), logins in parallel (a dead portal does
not fail the attach while another works), a scan of just the granted LUN, each path checked
to carry the volume's WWID, then the dm-multipath map named by that WWID.
Detach, in the order that loses no data: flush and remove the map, delete the SCSI devices,
log out of this target's sessions only, delete its node records.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from csi_iscsi.base.errors import CsiIscsiError, DeadlineExceeded, FailedPrecondition, Unavailable
from csi_iscsi.base.faults import fault_point
from csi_iscsi.base.runner import CommandFailed, CommandTimedOut
from csi_iscsi.chap import Chap
from csi_iscsi.contract import canonical_portal
from csi_iscsi.host.api import Repair
from csi_iscsi.host.iscsiadm import EXIT_NO_OBJS_FOUND, Iscsiadm, SessionSettings
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.scsi import IscsiSession, Scsi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachTimeouts:
    login: float = 30.0  # per portal, including iscsiadm's own retries
    device: float = 20.0  # from login to the SCSI device with the right WWID
    multipath_map: float = 20.0
    detach: float = 60.0  # the whole detach, even with the target gone


@dataclass(frozen=True)
class Attachment:
    target_iqn: str
    wwid: str
    device: str  # /dev/mapper/<wwid>, or /dev/sdX when multipath is off
    paths: tuple[str, ...]  # sdX of every logged-in portal
    failed_portals: tuple[str, ...]


class Attacher:
    def __init__(self, iscsiadm: Iscsiadm, scsi: Scsi, multipath: Multipath | None,
                 settings: SessionSettings, timeouts: AttachTimeouts | None = None,
                 poll_interval: float = 0.02, maps: Multipath | None = None) -> None:
        """multipath: assemble the map on attach (None: use one path). maps: what detach uses to
        flush a map named by the volume's WWID, which multipathd may have built over a single path
        all the same (default: multipath)."""
        self._iscsiadm = iscsiadm
        self._scsi = scsi
        self._multipath = multipath
        self._maps = maps if maps is not None else multipath
        self._settings = settings
        self._timeouts = timeouts or AttachTimeouts()
        self._poll = poll_interval

    @property
    def queueing_grace(self) -> float:
        """How long a detach lets a map with no usable path keep its queued I/O, waiting for a path
        to come back, before failing it: half of --detach-timeout, leaving the rest for the steps,
        and at most 90 s, within the 120 s a umount may take."""
        return min(self._timeouts.detach / 2, 90.0)

    def attach(self, target_iqn: str, portals: list[str], lun: int, wwid: str,
               chap: Chap | None = None) -> Attachment:
        with self._iscsiadm.iface_in_use(self._settings):
            return self._attach(target_iqn, portals, lun, wwid, chap)

    def _attach(self, target_iqn: str, portals: list[str], lun: int, wwid: str, chap: Chap | None) -> Attachment:
        map_existed = False
        if self._multipath is not None:
            map_existed = self._multipath.dm_name(wwid) is not None
            try:
                self._multipath.remember(wwid)
            except (CommandFailed, CommandTimedOut) as exc:  # wait_for_map still asks multipath itself
                log.warning("adding %s to multipath's wwids file failed: %s", wwid, exc)
        for portal in portals:
            self._iscsiadm.create_node(target_iqn, portal, self._settings, chap)
        fault_point("stage.after_records")
        failed: dict[str, str] = {}

        def login(portal: str) -> None:
            try:
                self._iscsiadm.login(target_iqn, portal, timeout=self._timeouts.login, iface=self._settings.iface)
            except CsiIscsiError as exc:
                failed[portal] = str(exc)

        with ThreadPoolExecutor(max_workers=max(1, len(portals))) as pool:
            list(pool.map(login, portals))
        if len(failed) == len(portals):
            try:
                self.delete_records(target_iqn)
            except CsiIscsiError as exc:  # the login's error is the one to report
                log.warning("deleting the records of %s after every login failed: %s", target_iqn, exc)
            raise Unavailable(f"login to {target_iqn} failed on every portal: "
                              + "; ".join(f"{p}: {why}" for p, why in failed.items()))
        for portal, why in failed.items():
            log.warning("login to %s on %s failed, continuing on the other paths: %s",
                        target_iqn, portal, why)
        fault_point("stage.after_login")

        sessions = self.sessions(target_iqn)
        for session in sessions:
            self._scsi.scan_lun(session.sid, lun)
        paths = [self._wait_for_device(session.sid, lun, wwid) for session in sessions]
        if self._multipath is None:
            device = f"/dev/{paths[0]}"
        else:
            device = str(self._multipath.wait_for_map(wwid, paths, self._timeouts.multipath_map))
            if map_existed:
                # A map a failed detach left behind may have had its queueing stopped: a volume in use
                # must ride out a target restart again.
                self._multipath.restore_queueing(wwid)
        fault_point("stage.after_device")
        return Attachment(target_iqn, wwid, device, tuple(paths), tuple(failed))

    def gaps(self, target_iqn: str, portals: list[str], lun: int, wwid: str,
             every: list[IscsiSession] | None = None) -> list[str]:
        """What a whole multipath attachment has and this one lacks, read from sysfs alone (no
        command, so every staged volume can be looked at often): a portal with no session, a
        logged-in session with no device for the LUN, a device not under the map. A session iscsid
        is recovering (FAILED) is not a gap: iscsid brings it back, or replacement_timeout fails it
        over. every: this node's sessions, read once for many volumes."""
        assert self._multipath is not None
        sessions = [s for s in (self.sessions() if every is None else every) if s.target_iqn == target_iqn]
        have = {canonical_portal(s.portal) for s in sessions}
        found = [f"{portal}: no session" for portal in portals if canonical_portal(portal) not in have]
        slaves = set(self._multipath.slaves(wwid))
        for session in sessions:
            if not session.logged_in:
                continue
            devices = self._scsi.devices(session.sid, lun)
            if not devices:
                found.append(f"{session.portal}: session {session.sid} has no device for LUN {lun}")
            found += [f"{session.portal}: {d.name} is not in map {wwid}" for d in devices if d.name not in slaves]
        return found

    def repair(self, target_iqn: str, portals: list[str], lun: int, wwid: str, chap: Chap | None,
               may_make_records: bool) -> list[Repair]:
        """Make a staged multipath attachment whole again, touching nothing that is there: log in
        on every portal without a session (making its node record again only when
        may_make_records: a CHAP volume's secret is only ever in memory), scan the LUN on a session
        without its device, and wait for multipathd to put every path (checked to carry the WWID)
        under the map. Each step bounded by the attach timeouts.

        Only redundancy is restored: a volume with no working path left (no logged-in session whose
        device is under the map) is not logged in again behind its mount. Its node may have been
        fenced (its ACL revoked, the volume used elsewhere since); NodeStageVolume, after kubelet
        has published it here again, is what may attach it."""
        assert self._multipath is not None
        done: list[Repair] = []
        with self._iscsiadm.iface_in_use(self._settings):
            before = self.sessions(target_iqn)
            devices = {s.sid: [d.name for d in self._scsi.devices(s.sid, lun)] for s in before if s.logged_in}
            had_devices = {name for names in devices.values() for name in names}
            slaves = set(self._multipath.slaves(wwid))
            if not had_devices & slaves:
                return [Repair("refused", ",".join(portals), False,
                               "no path of the volume works (no logged-in session carries a path of its map): not "
                               "attached again behind its mount, since the node may have been fenced; stage the "
                               "volume again (restart its pod) once the target lets this node in")]
            outside = sorted(had_devices - slaves)
            have = {canonical_portal(s.portal) for s in before}
            missing = [portal for portal in portals if canonical_portal(portal) not in have]
            if missing or not all(devices.values()):
                try:
                    self._multipath.remember(wwid)  # a new path joins the map whatever find_multipaths says
                except (CommandFailed, CommandTimedOut) as exc:
                    log.warning("adding %s to multipath's wwids file failed: %s", wwid, exc)
            if missing:
                with ThreadPoolExecutor(max_workers=len(missing)) as pool:
                    for steps in pool.map(lambda p: self._login_again(target_iqn, p, chap, may_make_records), missing):
                        done += steps
            old = {s.sid for s in before}
            paths = []
            for session in self.sessions(target_iqn):
                if not session.logged_in:
                    continue
                if not self._scsi.devices(session.sid, lun):
                    # A new session is scanned as an attach scans it (node.session.scan is manual): part
                    # of its login. An old one that lost its device is a repair of its own.
                    try:
                        self._scsi.scan_lun(session.sid, lun)
                    except OSError as exc:
                        done.append(Repair("rescan", session.portal, False, f"scanning LUN {lun}: {exc}"))
                        continue
                    if session.sid in old:
                        done.append(Repair("rescan", session.portal, True, f"session {session.sid}: LUN {lun} scanned"))
                try:
                    paths.append(self._wait_for_device(session.sid, lun, wwid))
                except CsiIscsiError as exc:
                    done.append(Repair("rescan", session.portal, False, str(exc)))
            if not set(paths) <= set(self._multipath.slaves(wwid)):
                try:
                    self._multipath.wait_for_map(wwid, paths, self._timeouts.multipath_map)
                    if outside:
                        done.append(Repair("map", ",".join(outside), True, f"back under map {wwid}"))
                except CsiIscsiError as exc:
                    missing = sorted(set(paths) - set(self._multipath.slaves(wwid)))
                    done.append(Repair("map", ",".join(missing), False, str(exc)))
        return done

    def _login_again(self, target_iqn: str, portal: str, chap: Chap | None, may_make_records: bool) -> list[Repair]:
        iface = self._settings.iface
        try:
            self._iscsiadm.login(target_iqn, portal, timeout=self._timeouts.login, iface=iface)
            return [Repair("login", portal, True, "logged in again")]
        except CommandFailed as exc:
            if exc.returncode != EXIT_NO_OBJS_FOUND:
                return [Repair("login", portal, False, str(exc))]
        except CsiIscsiError as exc:
            return [Repair("login", portal, False, str(exc))]
        if not may_make_records:
            return [Repair("record", portal, False,
                           "its node record is gone, and the volume logs in with CHAP, whose secret this plugin "
                           "holds only in memory from the stage (it has restarted since): stage the volume again "
                           "(restart its pod) to bring the path back")]
        try:
            self._iscsiadm.create_node(target_iqn, portal, self._settings, chap, recheck_iface=True)
        except CsiIscsiError as exc:
            return [Repair("record", portal, False, str(exc))]
        made = Repair("record", portal, True, "node record made again")
        try:
            self._iscsiadm.login(target_iqn, portal, timeout=self._timeouts.login, iface=iface)
        except CsiIscsiError as exc:
            return [made, Repair("login", portal, False, str(exc))]
        return [made, Repair("login", portal, True, "logged in again")]

    def sessions(self, target_iqn: str = "") -> list[IscsiSession]:
        """This node's sessions (of target_iqn, or of any target): those presenting this node's
        initiator name, so that nodes sharing one iscsid never act on each other's."""
        mine = self._settings.initiator_name.lower()
        return [s for s in self._scsi.iscsi_sessions()
                if (not target_iqn or s.target_iqn == target_iqn) and (not mine or s.initiator in ("", mine))]

    def live_paths(self, target_iqn: str, lun: int) -> list[str]:
        """sdX of the LUN on every logged-in session of the target."""
        return [d.name for s in self.sessions(target_iqn) if s.logged_in for d in self._scsi.devices(s.sid, lun)]

    def delete_records(self, target_iqn: str) -> None:
        """Every node record of the target, unless another node sharing this iscsid has a session to
        it: then only the records of this node's iface."""
        mine = {s.sid for s in self.sessions(target_iqn)}
        shared = any(s.target_iqn == target_iqn and s.sid not in mine for s in self._scsi.iscsi_sessions())
        self._iscsiadm.delete_target_records(target_iqn, iface=self._settings.iface if shared else "")
        self._iscsiadm.forget_iface_if_unused(self._settings)

    def _flush_pathless_maps(self, wwid: str, deadline: float) -> None:
        """A map of this WWID (by any name) rebuilt between the last check and the deletes is left
        with no paths; flushed so that it is not orphaned. One that holds paths is not ours to
        touch: another node on this kernel may have the volume staged."""
        assert self._maps is not None
        for name, slaves in self._maps.maps_of(wwid).items():
            if slaves:
                log.warning("multipath map %s of WWID %s still has paths %s after the detach; left alone",
                            name, wwid, slaves)
                continue
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"multipath map {name} left without paths could not be removed in time")
            self._maps.flush(name, deadline=deadline)

    def _wait_for_device(self, sid: int, lun: int, wwid: str) -> str:
        deadline = time.monotonic() + self._timeouts.device
        while True:
            for device in self._scsi.devices(sid, lun):
                seen = self._scsi.wwid(device.name)
                if seen == wwid:
                    return device.name
                if seen is not None:
                    raise FailedPrecondition(
                        f"session {sid} LUN {lun} is {device.name} with WWID {seen}, expected {wwid}; "
                        "refusing to use a device that is not this volume")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"no SCSI device for LUN {lun} appeared on iSCSI session {sid} "
                                       f"within {self._timeouts.device:g} s")
            time.sleep(self._poll)

    def detach(self, target_iqn: str, lun: int, wwid: str) -> None:
        """Idempotent; touches only this target's sessions, devices, map and records; every step
        within --detach-timeout in all."""
        deadline = time.monotonic() + self._timeouts.detach
        if self._maps is None:
            self._detach(target_iqn, lun, wwid, deadline)
            return
        with self._maps.queueing_bounded(wwid, self.queueing_grace):
            self._detach(target_iqn, lun, wwid, deadline)

    def _detach(self, target_iqn: str, lun: int, wwid: str, deadline: float) -> None:
        sessions = self.sessions(target_iqn)
        devices = [d.name for s in sessions for d in self._scsi.devices(s.sid, lun)]
        if self._maps is not None:
            for name in sorted({wwid, *self._maps.maps_over(devices)}):
                self._maps.flush(name, deadline=deadline)
        fault_point("unstage.after_flush")
        for device in devices:
            if self._maps is not None:
                # multipathd, behind on its udev events, may have built the map again over these
                # paths since the flush: a map goes before its paths, never after.
                for name in self._maps.maps_over([device]):
                    self._maps.flush(name, deadline=deadline)
            self._scsi.delete(device)
        while any(self._scsi.exists(d) for d in devices):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"SCSI devices {devices} of {target_iqn} did not go away")
            time.sleep(self._poll)
        if self._maps is not None:
            self._flush_pathless_maps(wwid, deadline)
            # Not while any SCSI device carries the WWID: another node on this kernel (kind) may be
            # attaching the volume, and its paths need the line.
            if self._multipath is not None and not self._maps.maps_of(wwid) and not self._scsi.devices_with(wwid):
                try:
                    self._maps.forget(wwid)
                except (CommandFailed, CommandTimedOut) as exc:  # a stale wwids line claims only this LUN
                    log.warning("taking %s out of multipath's wwids file failed: %s", wwid, exc)
        fault_point("unstage.after_devices")
        # By session id: this node's sessions whatever record or iface made them (an older version's,
        # one made by hand), and never another node's that shares this iscsid.
        for session in sessions:
            try:
                self._iscsiadm.logout_session(session.sid, timeout=max(1.0, deadline - time.monotonic()))
            except CommandFailed:
                # iscsiadm's exit for a session that ended while it looked (2, 21 or 22 by version and
                # timing) is no failure of ours: gone is what the logout was for.
                if self._scsi.session_exists(session.sid):
                    raise
                log.info("iSCSI session %d of %s ended before its logout", session.sid, target_iqn)
        fault_point("unstage.after_logout")
        self.delete_records(target_iqn)
        fault_point("unstage.after_records")

