"""One volume's LIO objects, through rtslib-fb: a storage object, a target with one TPG,
its portals, LUN 0, and one NodeACL per granted initiator.

Every call is idempotent ("ensure"), touches only the named objects (no walk over configfs),
and must be serialised by the caller: configfs has no locking.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csi_iscsi.base.errors import FailedPrecondition, NotFound
from csi_iscsi.chap import Chap

log = logging.getLogger(__name__)

TPG_TAG = 1
LUN_INDEX = 0
HBA_INDEXES = 1 << 20  # LIO accepts HBA indexes below 2^20
CONFIGFS = Path("/sys/kernel/config/target")
# LIO's counters of a target, by statistics group: its LUN's target port (every session's I/O; an
# ACL's iscsi_sess_stats showed exactly half of a two-path volume's in the testbed: an ACL points
# at one session of its initiator), and the target's iSCSI logins, logouts and session errors.
TARGET_COUNTERS = {
    "scsi_tgt_port": ("in_cmds", "read_mbytes", "write_mbytes"),
    "iscsi_login_stats": ("accepts", "other_fails", "authorize_fails", "authenticate_fails", "negotiate_fails"),
    "iscsi_logout_stats": ("normal_logouts", "abnormal_logouts"),
    "iscsi_sess_err": ("digest_errors", "cxn_errors", "format_errors"),
}


def _rtslib() -> Any:
    try:
        import rtslib_fb
    except ImportError as exc:  # the node plugin and unit tests never need it
        raise FailedPrecondition("rtslib-fb is not installed; the controller needs it to drive LIO") from exc
    return rtslib_fb


def _split_portal(portal: str) -> tuple[str, int]:
    host, port = portal.rsplit(":", 1)
    return host.strip("[]"), int(port)


class LioView:
    """Reads of live LIO for health and status: plain reads of configfs (a stable kernel
    interface), not rtslib objects, so a look at hundreds of volumes per ListVolumes stays a few
    syscalls each, never creates or loads anything (rtslib's lookups may load the iSCSI target
    module), and an odd entry someone else made cannot raise out of it."""

    def __init__(self, configfs: Path = CONFIGFS) -> None:
        self._root = configfs
        self._core = configfs / "core"
        self._iscsi = configfs / "iscsi"

    def _tpg_dir(self, iqn: str) -> Path:
        return self._iscsi / iqn / f"tpgt_{TPG_TAG}"

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def _acl_dirs(self, tpg: Path) -> dict[str, Path]:
        try:
            return {entry.name.lower(): Path(entry.path) for entry in os.scandir(tpg / "acls") if entry.is_dir()}
        except OSError:
            return {}

    def acls(self, iqn: str) -> list[tuple[str, bool, bool, bool]]:
        """(initiator, CHAP on, mutual CHAP on, LUN 0 write-protected) of each ACL of the target.
        Reads the CHAP user names only, to tell on from off; never a password."""
        found = []
        for initiator, acl in sorted(self._acl_dirs(self._tpg_dir(iqn)).items()):
            found.append((initiator, bool(self._read(acl / "auth" / "userid")),
                          bool(self._read(acl / "auth" / "userid_mutual")),
                          self._read(acl / f"lun_{LUN_INDEX}" / "write_protect") == "1"))
        return found

    def export_faults(self, name: str, iqn: str, portals: list[str], chap: bool,
                      grants: Mapping[str, bool]) -> list[str]:
        """What live LIO lacks of one volume's export, in words an operator can act on: the
        target, its portal group enabled with the expected portals and authentication, LUN 0 over
        the volume's storage object, and an ACL mapping LUN 0 (write-protected or not) for each
        granted initiator (initiator -> readonly). Reads only; never the CHAP secrets."""
        tpg = self._tpg_dir(iqn)
        if not tpg.is_dir():
            return [f"LIO has no target {iqn}"]
        faults = []
        if self._read(tpg / "enable") == "0":
            faults.append(f"target {iqn} is disabled")
        if (self._read(tpg / "attrib" / "authentication") == "1") != chap:
            faults.append(f"target {iqn} {'does not ask' if chap else 'asks'} for CHAP, unlike its volume record")
        try:
            live = {_split_portal(entry.name) for entry in os.scandir(tpg / "np") if ":" in entry.name}
        except (OSError, ValueError):
            live = set()
        for portal in portals:
            if _split_portal(portal) not in live:
                faults.append(f"target {iqn} does not listen on portal {portal}")
        lun = tpg / "lun" / f"lun_{LUN_INDEX}"
        try:
            exported = [os.path.basename(os.readlink(e.path)) for e in os.scandir(lun) if e.is_symlink()]
        except OSError:
            exported = []
        if not exported:
            faults.append(f"target {iqn} has no LUN {LUN_INDEX}")
        elif exported[0] != name:
            faults.append(f"target {iqn} exports {exported[0]} as LUN {LUN_INDEX}, not {name}")
        acls = self._acl_dirs(tpg)
        for initiator, readonly in sorted(grants.items()):
            acl = acls.get(initiator.lower())
            if acl is None:
                faults.append(f"no ACL lets {initiator} in, though the volume is published to it")
                continue
            protected = self._read(acl / f"lun_{LUN_INDEX}" / "write_protect")
            if protected is None:
                faults.append(f"the ACL of {initiator} maps no LUN {LUN_INDEX}")
            elif (protected == "1") != readonly:
                faults.append(f"the ACL of {initiator} is {'writable' if readonly else 'read-only'}, "
                              f"though the volume is published to it {'read-only' if readonly else 'writable'}")
        return faults


    # Inventory, for csi-iscsi doctor ------------------------------------------------------------

    def target_dirs(self, prefix: str) -> list[str]:
        """IQNs of the targets whose IQN starts with prefix (one directory listing)."""
        try:
            return sorted(e.name for e in os.scandir(self._iscsi) if e.is_dir() and e.name.startswith(prefix))
        except OSError:
            return []

    def storage_objects(self) -> dict[str, list[tuple[str, str]]]:
        """name -> [(its HBA directory, e.g. fileio_7; the file or device it serves), ...] of every
        storage object of every backstore (a name can be in more than one). A directory that
        cannot be listed raises: what LIO serves must never look smaller than it is."""
        found: dict[str, list[tuple[str, str]]] = {}
        for hba in sorted(self._core.glob("*_*")):
            if not hba.is_dir() or hba.name.startswith("alua"):
                continue
            for entry in os.scandir(hba):
                if entry.is_dir():
                    found.setdefault(entry.name, []).append(
                        (hba.name, self._read(Path(entry.path) / "udev_path") or ""))
        return found

    def exports(self) -> dict[str, list[str]]:
        """storage object (HBA dir/name) -> every target:LUN exporting it, over every fabric
        (deleting a storage object takes it out of all of them)."""
        found: dict[str, list[str]] = {}
        for lun in sorted(self._root.glob("*/*/tpgt_*/lun/lun_*")):
            for entry in os.scandir(lun):
                if entry.is_symlink():
                    so = Path(os.path.realpath(entry.path))
                    found.setdefault(f"{so.parent.name}/{so.name}", []).append(
                        f"{lun.parents[3].name} {lun.parents[2].name} {lun.name}")
        return found

    def all_acls(self, iqn: str) -> list[str] | None:
        """Initiators with an ACL in any of the target's TPGs; None when they cannot be read."""
        try:
            return sorted({entry.name.lower() for tpg in (self._iscsi / iqn).glob("tpgt_*")
                           for entry in os.scandir(tpg / "acls") if entry.is_dir()})
        except OSError:
            return None

    def sessions(self, iqn: str) -> list[str] | None:
        """Initiators with a session logged in to the target now (each ACL's info says; one let in
        without an ACL shows in dynamic_sessions). None when that cannot be told (a read failed):
        never taken for "no session"."""
        found = []
        try:
            tpgs = [Path(e.path) for e in os.scandir(self._iscsi / iqn) if e.name.startswith("tpgt_")]
            for tpg in tpgs:
                for entry in os.scandir(tpg / "acls"):
                    if not entry.is_dir():
                        continue
                    info = (Path(entry.path) / "info").read_text()
                    if not info.startswith("No active"):
                        found.append(entry.name.lower())
                try:
                    dynamic = (tpg / "dynamic_sessions").read_text()
                except FileNotFoundError:  # a kernel without it: only a demo-mode TPG lets one in without an ACL
                    if (tpg / "attrib" / "generate_node_acls").read_text().strip() != "0":
                        return None
                    dynamic = ""
                found += [line.strip() for line in dynamic.replace("\0", "\n").splitlines() if line.strip()]
        except OSError:
            return None
        return sorted(set(found))

    def target_stats(self, iqn: str) -> dict[str, int]:
        """LIO's counters of one volume's target, "group/name" -> value: LUN 0's commands and
        MiB read and written (its target port's, over every session and path), and the target's
        iSCSI login, logout and session-error counts. Kept from the target's creation; nothing is
        read where a counter is absent."""
        groups = [(self._tpg_dir(iqn) / "lun" / f"lun_{LUN_INDEX}" / "statistics", "scsi_tgt_port")]
        groups += [(self._iscsi / iqn / "fabric_statistics", g) for g in TARGET_COUNTERS if g != "scsi_tgt_port"]
        found = {}
        for base, group in groups:
            for name in TARGET_COUNTERS[group]:
                text = self._read(base / group / name)
                if text and text.isdigit():
                    found[f"{group}/{name}"] = int(text)
        return found


class Lio(LioView):
    def __init__(self, configfs: Path = CONFIGFS) -> None:
        super().__init__(configfs)
        self._rts = _rtslib()
        # rtslib-fb 2.2 renamed RTSLibNotInCFS to RTSLibNotInCFSError (no alias); Debian ships 2.1.
        self._not_in_cfs: type[Exception] = getattr(self._rts, "RTSLibNotInCFSError", None) or \
            self._rts.RTSLibNotInCFS
        self._fabric = self._rts.FabricModule("iscsi")

    # Storage objects -------------------------------------------------------------------------
    #
    # rtslib finds a storage object's HBA index (core/fileio_N) through a per-process cache that
    # goes stale as soon as anything else changes LIO (targetctl restore renumbers every HBA), and
    # a stale cache can then hand out an HBA that is in use. So we never rely on it: a volume's
    # object lives at an index derived from its name (first free slot of a short probe sequence,
    # one stat each), an exported volume's object is found through its LUN 0 link, and only the
    # rare paths (a retry after a crash, start-up reconciliation) search configfs by name.

    _DIRS = (("fileio", "FileIOStorageObject"), ("iblock", "BlockStorageObject"))
    _PROBES = 16

    def _probe(self, dirp: str, name: str) -> list[int]:
        start = int(hashlib.sha256(name.encode()).hexdigest()[:5], 16)
        return [(start + i) % HBA_INDEXES for i in range(self._PROBES)]

    def _locate(self, name: str, iqn: str | None = None, thorough: bool = False) -> Any | None:
        rts = self._rts
        if iqn is not None:
            with contextlib.suppress(NotFound, self._not_in_cfs, rts.RTSLibError):
                so = rts.LUN(self._tpg(iqn), LUN_INDEX).storage_object
                if so.name == name:
                    return so
        for dirp, cls_name in self._DIRS:
            for index in self._probe(dirp, name):
                hba = self._core / f"{dirp}_{index}"
                if not hba.is_dir():
                    break
                if (hba / name).is_dir():
                    return getattr(rts, cls_name)(name, index=index)
        if thorough:
            for path in sorted(self._core.glob(f"*_*/{name}")):
                hba_dir, hba_index = path.parent.name.rsplit("_", 1)
                found = dict(self._DIRS).get(hba_dir)
                if found:
                    return getattr(rts, found)(name, index=int(hba_index))
        return None

    def _free_index(self, dirp: str, name: str) -> int:
        """The first free slot of the name's probe window, else the first free one after it. A
        restore numbers HBAs 0..N-1, so a window can be full; with N HBAs in use, the search ends
        within N+1 stats (a fresh name then lives outside its window, which _locate's thorough search
        and the LUN link still find)."""
        probes = self._probe(dirp, name)
        for index in probes:
            if not (self._core / f"{dirp}_{index}").exists():
                return index
        for step in range(HBA_INDEXES):
            index = (probes[-1] + 1 + step) % HBA_INDEXES
            if not (self._core / f"{dirp}_{index}").exists():
                return index
        raise FailedPrecondition(f"every LIO {dirp} HBA index is in use")

    def ensure_fileio(self, name: str, path: str, size: int, serial: str, fresh: bool = False) -> None:
        """fresh: the caller knows the object cannot exist yet (its record was just made)."""
        so = None if fresh else self._locate(name, thorough=True)
        if so is None:
            self._rts.FileIOStorageObject(name, dev=path, size=size, wwn=serial, write_back=False,
                                          index=self._free_index("fileio", name))
        elif so.wwn != serial:
            raise FailedPrecondition(f"LIO storage object {name} exists with another unit serial")

    def ensure_block(self, name: str, device: str, serial: str, fresh: bool = False) -> None:
        so = None if fresh else self._locate(name, thorough=True)
        if so is None:
            self._rts.BlockStorageObject(name, dev=device, wwn=serial, index=self._free_index("iblock", name))
        elif so.wwn != serial:
            raise FailedPrecondition(f"LIO storage object {name} exists with another unit serial")

    def delete_storage_object_at(self, hba: str, name: str) -> None:
        """Delete exactly core/<hba>/<name> (csi-iscsi doctor: the object it checked, not one of
        the same name elsewhere)."""
        kind, index = hba.rsplit("_", 1)
        cls_name = dict(self._DIRS).get(kind)
        if cls_name is None:
            raise FailedPrecondition(f"LIO storage object {hba}/{name} is not fileio or iblock")
        getattr(self._rts, cls_name)(name, index=int(index)).delete()

    def delete_storage_object(self, name: str, iqn: str | None = None) -> None:
        so = self._locate(name, iqn, thorough=True)
        if so is not None:
            so.delete()

    def storage_object_exists(self, name: str, iqn: str | None = None) -> bool:
        return self._locate(name, iqn, thorough=True) is not None

    def _storage_object(self, name: str, iqn: str | None = None) -> Any:
        so = self._locate(name, iqn, thorough=True)
        if so is None:
            raise NotFound(f"LIO storage object {name} does not exist")
        return so

    # Targets -----------------------------------------------------------------------------------

    def _tpg(self, iqn: str, mode: str = "lookup") -> Any:
        rts = self._rts
        try:
            target = rts.Target(self._fabric, iqn, mode=mode)
            return rts.TPG(target, TPG_TAG, mode=mode)
        except self._not_in_cfs as exc:
            raise NotFound(f"iSCSI target {iqn} does not exist") from exc

    def ensure_target(self, iqn: str, portals: list[str], storage_object: str, chap: bool) -> None:
        """Target + TPG 1 + every portal + LUN 0 of storage_object, enabled, never in demo mode."""
        tpg = self._tpg(iqn, mode="any")
        # Only initiators with an ACL see this target in SendTargets, and only they may log in.
        tpg.set_attribute("generate_node_acls", "0")
        tpg.set_attribute("demo_mode_discovery", "0")
        tpg.set_attribute("authentication", "1" if chap else "0")
        for portal in portals:
            ip, port = _split_portal(portal)
            self._rts.NetworkPortal(tpg, ip, port, mode="any")
        luns = {lun.lun: lun for lun in tpg.luns}
        if LUN_INDEX not in luns:
            self._rts.LUN(tpg, LUN_INDEX, storage_object=self._storage_object(storage_object))
        elif luns[LUN_INDEX].storage_object.name != storage_object:
            raise FailedPrecondition(f"target {iqn} exports another storage object as LUN 0")
        if not tpg.enable:
            tpg.enable = True

    def delete_target(self, iqn: str) -> None:
        rts = self._rts
        with contextlib.suppress(self._not_in_cfs):
            rts.Target(self._fabric, iqn, mode="lookup").delete()

    def target_exists(self, iqn: str) -> bool:
        try:
            self._tpg(iqn)
            return True
        except NotFound:
            return False

    # ACLs --------------------------------------------------------------------------------------

    def grant(self, iqn: str, initiator: str, *, readonly: bool = False,
              chap: Chap | None = None) -> None:
        """An ACL for initiator with LUN 0 mapped (write-protected when readonly)."""
        tpg = self._tpg(iqn)
        acl = self._rts.NodeACL(tpg, initiator, mode="any")
        mapped = {m.mapped_lun: m for m in acl.mapped_luns}
        if LUN_INDEX in mapped and bool(mapped[LUN_INDEX].write_protect) != readonly:
            mapped[LUN_INDEX].delete()
            del mapped[LUN_INDEX]
        if LUN_INDEX not in mapped:
            tpg_lun = self._rts.LUN(tpg, LUN_INDEX)
            self._rts.MappedLUN(acl, LUN_INDEX, tpg_lun=tpg_lun, write_protect=readonly)
        if chap is not None:
            acl.chap_userid = chap.user
            acl.chap_password = chap.password
            if chap.mutual_user:
                acl.chap_mutual_userid = chap.mutual_user
                acl.chap_mutual_password = chap.mutual_password

    def revoke(self, iqn: str, initiator: str) -> bool:
        """Remove the initiator's ACL; LIO ends that initiator's sessions with it. False if there was none."""
        rts = self._rts
        try:
            tpg = self._tpg(iqn)
            rts.NodeACL(tpg, initiator, mode="lookup").delete()
            return True
        except (NotFound, self._not_in_cfs):
            return False

    def initiators(self, iqn: str) -> list[str]:
        try:
            return sorted(acl.node_wwn for acl in self._tpg(iqn).node_acls)
        except NotFound:
            return []

    # Saved configuration -------------------------------------------------------------------------

    def dump(self, storage_object: str, iqn: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The saveconfig entries of one volume's objects (None where an object does not exist)."""
        rts = self._rts
        so = self._locate(storage_object, iqn, thorough=True)
        so_dump = so.dump() if so is not None else None
        target_dump = None
        with contextlib.suppress(self._not_in_cfs):
            target_dump = rts.Target(self._fabric, iqn, mode="lookup").dump()
        return so_dump, target_dump

    def dump_acl(self, iqn: str, initiator: str) -> dict[str, Any] | None:
        """The saveconfig entry of one ACL (None if it does not exist)."""
        rts = self._rts
        try:
            dumped: dict[str, Any] = rts.NodeACL(self._tpg(iqn), initiator, mode="lookup").dump()
            return dumped
        except (NotFound, self._not_in_cfs):
            return None

    def restore(self, so_dump: dict[str, Any] | None, target_dump: dict[str, Any] | None) -> list[str]:
        """Recreate one volume's objects from their saved entries; returns rtslib's non-fatal errors."""
        config = {"storage_objects": [so_dump] if so_dump else [], "targets": [target_dump] if target_dump else []}
        root = self._rts.RTSRoot()
        root.invalidate_caches()  # restore allocates HBA indexes through rtslib's cache: make it true
        errors: list[str] = root.restore(config, clear_existing=False)
        return errors

    def target_iqns(self, prefix: str) -> list[str]:
        """Every target whose IQN starts with prefix. Walks configfs: start-up reconciliation only."""
        return sorted(t.wwn for t in self._fabric.targets if t.wwn.startswith(prefix))
