"""SCSI devices behind iSCSI sessions, found through sysfs by session and LUN, never by /dev/sdX order."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

_HOST_RE = re.compile(r"/host(\d+)/session\d+$")


@dataclass(frozen=True)
class ScsiDevice:
    name: str  # sdX
    hctl: str  # host:channel:target:lun
    sid: int


@dataclass(frozen=True)
class IscsiSession:
    sid: int
    portal: str
    target_iqn: str
    state: str = "unknown"  # the kernel's: LOGGED_IN, FAILED (recovering), FREE
    initiator: str = ""  # the initiator name the session presented

    @property
    def logged_in(self) -> bool:
        return self.state == "LOGGED_IN"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class Scsi:
    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self._sys = sysfs

    def iscsi_sessions(self) -> list[IscsiSession]:
        """The kernel's iSCSI sessions, read from sysfs (what `iscsiadm -m session` reads, minus a
        process). Plain os calls: this runs per status and per self-heal pass, for every session."""
        found = []
        sessions_dir, conns_dir = f"{self._sys}/class/iscsi_session", f"{self._sys}/class/iscsi_connection"
        try:
            names = sorted(e.name for e in os.scandir(sessions_dir) if e.name.startswith("session"))
        except FileNotFoundError:
            return []
        for name in names:
            sid = int(name.removeprefix("session"))
            session, conn = f"{sessions_dir}/{name}", f"{conns_dir}/connection{sid}:0"
            try:
                iqn = _read(f"{session}/targetname")
                address = _read(f"{conn}/persistent_address")
                port = _read(f"{conn}/persistent_port")
            except OSError:
                continue  # a session going away while we look
            try:
                state = _read(f"{session}/state")
            except OSError:
                state = "unknown"
            try:
                initiator = _read(f"{session}/initiatorname").lower()
            except OSError:
                initiator = ""
            host = f"[{address}]" if ":" in address else address
            found.append(IscsiSession(sid, f"{host}:{port}", iqn, state, initiator))
        return found

    def session_exists(self, sid: int) -> bool:
        return (self._sys / "class/iscsi_session" / f"session{sid}").exists()

    def _session_dir(self, sid: int) -> Path:
        return (self._sys / "class/iscsi_session" / f"session{sid}" / "device").resolve()

    def host_number(self, sid: int) -> int:
        m = _HOST_RE.search(str(self._session_dir(sid)))
        if not m:
            raise FileNotFoundError(f"iSCSI session {sid} has no SCSI host in sysfs")
        return int(m[1])

    def scan_lun(self, sid: int, lun: int) -> None:
        """Ask the session's SCSI host to probe exactly one LUN (node.session.scan is manual)."""
        host = self.host_number(sid)
        (self._sys / "class/scsi_host" / f"host{host}" / "scan").write_text(f"- - {lun}")

    def devices(self, sid: int, lun: int | None = None) -> list[ScsiDevice]:
        found = []
        # Through the session's device link, not its resolved path: resolving walks every component
        # of a deep sysfs path, a cost every status and self-heal pass paid per session.
        for block in sorted((self._sys / "class/iscsi_session" / f"session{sid}" / "device").glob(
                "target*/*:*:*:*/block/*")):
            hctl = block.parent.parent.name
            if lun is not None and hctl.rsplit(":", 1)[1] != str(lun):
                continue
            found.append(ScsiDevice(block.name, hctl, sid))
        return found

    def wwid(self, device: str) -> str | None:
        """The device's WWID as multipath names it (naa.X → 3X), or None when not readable yet."""
        try:
            raw = (self._sys / "block" / device / "device/wwid").read_text().strip()
        except OSError:
            return None
        if raw.startswith("naa."):
            return "3" + raw[4:]
        return None

    def devices_with(self, wwid: str) -> list[str]:
        """Every SCSI disk on this kernel that carries the WWID, whatever session it came by."""
        return sorted(d.name for d in (self._sys / "block").glob("sd*") if self.wwid(d.name) == wwid)

    def state(self, device: str) -> str:
        try:
            return (self._sys / "block" / device / "device/state").read_text().strip()
        except OSError:
            return "gone"

    def exists(self, device: str) -> bool:
        return (self._sys / "block" / device).exists()

    def size_bytes(self, device: str) -> int:
        return int((self._sys / "block" / device / "size").read_text()) * 512

    def rescan(self, device: str) -> None:
        """Ask the device to re-read its capacity (after the target grew the LUN)."""
        (self._sys / "block" / device / "device/rescan").write_text("1")

    def delete(self, device: str) -> None:
        """Remove the SCSI device from the kernel (after its data was flushed and its map removed)."""
        try:
            (self._sys / "block" / device / "device/delete").write_text("1")
        except FileNotFoundError:
            pass  # already gone
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.ENXIO):  # being removed by the kernel already
                raise
