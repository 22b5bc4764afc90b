"""One volume's LIO objects, through rtslib-fb: a storage object, a target with one TPG,
its portals, LUN 0, and one NodeACL per granted initiator.

Every call is idempotent ("ensure"), touches only the named objects (no walk over configfs),
and must be serialised by the caller: configfs has no locking.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from csi_iscsi.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

TPG_TAG = 1
LUN_INDEX = 0


@dataclass(frozen=True)
class TargetChap:
    """CHAP for one ACL: the initiator proves user/password; mutual_* is the target's proof."""

    user: str
    password: str
    mutual_user: str = ""
    mutual_password: str = ""


def _rtslib() -> Any:
    try:
        import rtslib_fb
    except ImportError as exc:  # the node plugin and unit tests never need it
        raise FailedPrecondition("rtslib-fb is not installed; the controller needs it to drive LIO") from exc
    return rtslib_fb


def _split_portal(portal: str) -> tuple[str, int]:
    host, port = portal.rsplit(":", 1)
    return host.strip("[]"), int(port)


class Lio:
    def __init__(self) -> None:
        self._rts = _rtslib()
        self._fabric = self._rts.FabricModule("iscsi")

    # Storage objects -------------------------------------------------------------------------

    def ensure_fileio(self, name: str, path: str, size: int, serial: str) -> None:
        rts = self._rts
        try:
            so = rts.FileIOStorageObject(name)
        except rts.RTSLibNotInCFS:
            rts.FileIOStorageObject(name, dev=path, size=size, wwn=serial, write_back=False)
            return
        if so.wwn != serial:
            raise FailedPrecondition(f"LIO storage object {name} exists with another unit serial")

    def ensure_block(self, name: str, device: str, serial: str) -> None:
        rts = self._rts
        try:
            so = rts.BlockStorageObject(name)
        except rts.RTSLibNotInCFS:
            rts.BlockStorageObject(name, dev=device, wwn=serial)
            return
        if so.wwn != serial:
            raise FailedPrecondition(f"LIO storage object {name} exists with another unit serial")

    def delete_storage_object(self, name: str) -> None:
        rts = self._rts
        for cls in (rts.FileIOStorageObject, rts.BlockStorageObject):
            try:
                cls(name).delete()
            except rts.RTSLibNotInCFS:
                continue

    def storage_object_exists(self, name: str) -> bool:
        rts = self._rts
        for cls in (rts.FileIOStorageObject, rts.BlockStorageObject):
            try:
                cls(name)
                return True
            except rts.RTSLibNotInCFS:
                continue
        return False

    def _storage_object(self, name: str) -> Any:
        rts = self._rts
        for cls in (rts.FileIOStorageObject, rts.BlockStorageObject):
            try:
                return cls(name)
            except rts.RTSLibNotInCFS:
                continue
        raise NotFound(f"LIO storage object {name} does not exist")

    # Targets -----------------------------------------------------------------------------------

    def _tpg(self, iqn: str, mode: str = "lookup") -> Any:
        rts = self._rts
        try:
            target = rts.Target(self._fabric, iqn, mode=mode)
            return rts.TPG(target, TPG_TAG, mode=mode)
        except rts.RTSLibNotInCFS as exc:
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
        with contextlib.suppress(rts.RTSLibNotInCFS):
            rts.Target(self._fabric, iqn, mode="lookup").delete()

    def target_exists(self, iqn: str) -> bool:
        try:
            self._tpg(iqn)
            return True
        except NotFound:
            return False

    # ACLs --------------------------------------------------------------------------------------

    def grant(self, iqn: str, initiator: str, *, readonly: bool = False,
              chap: TargetChap | None = None) -> None:
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

    def revoke(self, iqn: str, initiator: str) -> None:
        """Remove the initiator's ACL; LIO ends that initiator's sessions with it."""
        rts = self._rts
        try:
            tpg = self._tpg(iqn)
            rts.NodeACL(tpg, initiator, mode="lookup").delete()
        except (NotFound, rts.RTSLibNotInCFS):
            pass

    def initiators(self, iqn: str) -> list[str]:
        try:
            return sorted(acl.node_wwn for acl in self._tpg(iqn).node_acls)
        except NotFound:
            return []
