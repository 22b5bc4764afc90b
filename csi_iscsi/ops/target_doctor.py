"""`csi-iscsi doctor` on the target node: what no controller record owns, found in live LIO
(configfs), the saved LIO config and the pools; and records with nothing behind them.

Ownership is the controller's records: a volume's record is written before any of its LIO objects
or pool data is made and removed only after all of them are gone, so a target, storage object,
saved entry or pool item under a volume id with no record was made by hand, restored at boot from
a saved entry a crash left, or left by a crash of another version. An unreadable record still owns
its volume.

The controller alone changes LIO and the saved config, and keeps the saved config in memory: a
fix made beside it would be undone (or would undo one of its writes). So --fix runs only while the
controller is stopped, holding its state directory's lock; a dry run reads only and is safe at any
time. Nothing with a session logged in is removed, and pool data only with --delete-data: a pool
item without a record is still someone's bytes."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from csi_iscsi import contract
from csi_iscsi.lio.api import READY
from csi_iscsi.lio.objects import LioView
from csi_iscsi.lio.pools import Pool
from csi_iscsi.lio.records import RecordStore
from csi_iscsi.lio.saveconfig import SavedConfig
from csi_iscsi.lio.snapshot_records import SnapshotStore
from csi_iscsi.ops.findings import Finding

log = logging.getLogger(__name__)

# What each kind of finding is, for the text output and docs/operations.md.
TARGET, OBJECT, SAVED, DATA, RECORD = "lio-target", "lio-object", "saved", "data", "record"


class LioWriter(Protocol):
    """What --fix does to live LIO (csi_iscsi.lio.objects.Lio)."""

    def delete_target(self, iqn: str) -> None: ...
    def delete_storage_object_at(self, hba: str, name: str) -> None: ...
    def dump(self, storage_object: str, iqn: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]: ...


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file, (0, device number) of a block device; None when it cannot be
    stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (0, st.st_rdev) if stat.S_ISBLK(st.st_mode) else (st.st_dev, st.st_ino)


class TargetDoctor:
    def __init__(self, controller_dir: Path, view: LioView, saveconfig: Path, pools: Mapping[str, Pool], *,
                 prefix: str = contract.DEFAULT_TARGET_IQN_PREFIX) -> None:
        self._dir = controller_dir
        self._view = view
        self._saveconfig = saveconfig
        self._pools = pools
        self._prefix = prefix

    def _owned(self) -> tuple[set[str], set[str], RecordStore]:
        """(volume ids, snapshot ids) with a record, readable or not, and the volume records."""
        records = RecordStore(self._dir, readonly=True)
        snapshots = SnapshotStore(self._dir, readonly=True)
        volumes = {r.volume_id for r in records.all()} | records.unreadable
        snaps = {s.snapshot_id for s in snapshots.all()} | snapshots.unreadable
        return volumes, snaps, records

    def _saved(self) -> dict[str, Any]:
        if not self._saveconfig.exists():
            return {}
        doc = json.loads(self._saveconfig.read_text() or "{}")
        return doc if isinstance(doc, dict) else {}

    def find(self) -> list[Finding]:
        volumes, snapshots, records = self._owned()
        findings: list[Finding] = []
        exports = self._view.exports()
        objects = self._view.storage_objects()
        live = self._view.target_dirs(self._prefix + ":")
        for iqn in live:
            vid = contract.volume_id_of(iqn)
            if not vid or vid in volumes:
                continue
            sessions = self._view.sessions(iqn)
            acls = [a[0] for a in self._view.acls(iqn)]
            why = "no volume record names it (made by hand, or restored at boot from a saved entry a crash left)"
            why += f"; ACLs for {', '.join(acls)}" if acls else ""
            why += "; whether an initiator is logged in cannot be told" if sessions is None else \
                (f"; logged in now: {', '.join(sessions)}" if sessions else "")
            findings.append(Finding(TARGET, f"target {iqn}", vid, why,
                                    "delete the target (its portals and LUN), unless it has ACLs or an initiator is "
                                    "logged in"))
        for name, (hba, backing) in sorted(objects.items()):
            if not contract.is_volume_id(name) or name in volumes:
                continue
            users = exports.get(f"{hba}/{name}", [])
            exported = f"; exported by {', '.join(users)}" if users else ""
            findings.append(Finding(OBJECT, f"storage object {hba}/{name} over {backing or '?'}", name,
                                    "no volume record names it" + exported,
                                    "delete the storage object (not its data), once no target exports it"))
        saved = self._saved()
        for so in saved.get("storage_objects", []):
            name = str(so.get("name", ""))
            if contract.is_volume_id(name) and name not in volumes:
                findings.append(Finding(SAVED, f"saved storage object {name} in {self._saveconfig}", name,
                                        "no volume record names it: a boot would make it again in LIO",
                                        "drop the entry from the saved config"))
        for target in saved.get("targets", []):
            wwn = str(target.get("wwn", ""))
            vid = contract.volume_id_of(wwn) if wwn.startswith(self._prefix + ":") else ""
            if vid and vid not in volumes:
                findings.append(Finding(SAVED, f"saved target {wwn} in {self._saveconfig}", vid,
                                        "no volume record names it: a boot would make it again in LIO",
                                        "drop the entry (with any CHAP secret it holds) from the saved config"))
        served, unknown = self._served(objects)
        for pool in self._pools.values():
            for item, where in pool.items().items():
                if item in volumes or item in snapshots:
                    continue
                why = "no volume or snapshot record names it"
                if _identity(where) in served:
                    why += "; LIO serves it (see its storage object)"
                elif unknown:
                    why += f"; whether LIO serves it cannot be told ({', '.join(unknown[:3])} back onto what?)"
                findings.append(Finding(DATA, f"{where} in pool {pool.name}", item, why,
                                        "delete it, only with --delete-data (the data is lost)"))
        saved_sos = {str(so.get("name", "")) for so in saved.get("storage_objects", [])}
        saved_targets = {str(t.get("wwn", "")) for t in saved.get("targets", [])}
        for record in records.all():
            findings += self._record_findings(record.volume_id, record.state, objects, set(live), saved_sos,
                                              saved_targets)
        return findings

    @staticmethod
    def _served(objects: Mapping[str, tuple[str, str]]) -> tuple[set[tuple[int, int]], list[str]]:
        """The files and block devices LIO's storage objects serve, by identity (a path may be
        spelled through a symlink), and the objects whose backing cannot be told."""
        served, unknown = set(), []
        for name, (hba, backing) in objects.items():
            ident = _identity(backing) if backing else None
            if ident is None:
                unknown.append(f"{hba}/{name}")
            else:
                served.add(ident)
        return served, unknown

    def _record_findings(self, vid: str, state: str, objects: Mapping[str, tuple[str, str]], live: set[str],
                         saved_sos: set[str], saved_targets: set[str]) -> list[Finding]:
        iqn = contract.target_iqn(vid, self._prefix)
        path = str(self._dir / "volumes" / f"{vid}.json")
        if state != READY:
            return [Finding(RECORD, path, vid, f"left {state} by a crash or a call not retried; a retried "
                            "CreateVolume/DeleteVolume finishes it (the CO retries until it does)", "")]
        missing = [what for what, there in (("storage object", vid in objects),
                                            ("target", iqn in live)) if not there]
        if missing:
            return [Finding(RECORD, path, vid, f"ready, and LIO lacks its {' and '.join(missing)}: the controller "
                            "restores them from the saved config and the record at its next start (its data "
                            "permitting)", "")]
        if vid not in saved_sos or iqn not in saved_targets:
            return [Finding(RECORD, path, vid, "exported in LIO but missing from the saved config: a reboot would "
                            "leave it to the controller, which cannot restore CHAP ACLs", "save its live LIO objects "
                            "to the saved config")]
        return []

    def fix(self, findings: list[Finding], lio: LioWriter, *, delete_data: bool) -> list[Finding]:
        """Clear what find() reported, targets before storage objects, live LIO before the saved
        config, data last; looked at again before each step. Call only with the controller
        stopped (its state directory's lock held). One failure is its finding's result."""
        volumes, snapshots, _ = self._owned()
        order = {TARGET: 0, OBJECT: 1, SAVED: 2, RECORD: 3, DATA: 4}
        done: dict[int, Finding] = {}
        # Saved entries to write (a dump) or drop (None), in one write of the saved config.
        sos: dict[str, dict[str, Any] | None] = {}
        targets: dict[str, dict[str, Any] | None] = {}
        saved_at: list[int] = []
        left: set[str] = set()  # volumes whose live LIO objects stay: so do their saved entries
        for index, f in sorted(enumerate(findings), key=lambda pair: order.get(pair[1].kind, 9)):
            if not f.fix:
                done[index] = replace(f, result="reported only")
                continue
            if f.volume_id in volumes or f.volume_id in snapshots:
                done[index] = replace(f, result="left: a record names it now") if f.kind != RECORD else \
                    replace(f, result=self._try(partial(self._resave, f, lio, sos, targets)))
                saved_at += [index] if f.kind == RECORD else []
                continue
            if f.kind == TARGET:
                done[index] = replace(f, result=self._try(partial(self._delete_target, f, lio)))
            elif f.kind == OBJECT:
                done[index] = replace(f, result=self._try(partial(self._delete_object, f, lio)))
            elif f.kind == SAVED and f.volume_id in left:
                done[index] = replace(f, result="left: its live LIO objects stay, and so does their saved entry")
                continue
            elif f.kind == SAVED:
                # The entry's own name, as found (a target need not be <prefix>:<id> exactly).
                if f.subject.startswith("saved target "):
                    targets[f.subject.split(" ")[2]] = None
                else:
                    sos[f.subject.split(" ")[3]] = None
                saved_at.append(index)
                done[index] = f
            elif f.kind == DATA:
                done[index] = replace(f, result=self._try(partial(self._delete_data, f, delete_data)))
            if f.kind in (TARGET, OBJECT) and not done[index].result.startswith("cleared"):
                left.add(f.volume_id)
        if saved_at:
            result = self._try(partial(self._write_saved, sos, targets))
            for index in saved_at:
                if not done[index].result:
                    done[index] = replace(done[index], result=result)
        return [done[i] for i in range(len(findings))]

    @staticmethod
    def _try(action: Callable[[], str]) -> str:
        try:
            return action()
        except Exception as exc:  # one finding's failure is its result, never the end of --fix
            log.warning("doctor: %s: %s", type(exc).__name__, exc)
            return f"left: {type(exc).__name__}: {exc}"

    def _delete_target(self, f: Finding, lio: LioWriter) -> str:
        iqn = f.subject.removeprefix("target ")
        if iqn not in self._view.target_dirs(iqn):
            return "cleared (gone meanwhile)"
        acls = [a[0] for a in self._view.acls(iqn)]
        if acls:
            # What a crash of the controller leaves has none (a volume is unpublished before it is
            # deleted); ACLs mean someone let initiators in: a person decides.
            return (f"left: it has ACLs for {', '.join(acls)}; if no one uses it, delete it by hand "
                    f"(targetcli /iscsi delete {iqn}) and run doctor again")
        sessions = self._view.sessions(iqn)
        if sessions is None:
            return "left: whether an initiator is logged in cannot be told (configfs could not be read)"
        if sessions:
            return (f"left: logged in by {', '.join(sessions)}; run csi-iscsi doctor --fix on that node (or log it "
                    "out) first")
        lio.delete_target(iqn)
        return "cleared"

    def _delete_object(self, f: Finding, lio: LioWriter) -> str:
        name = f.volume_id
        objects = self._view.storage_objects()
        if name not in objects:
            return "cleared (gone meanwhile)"
        hba = f.subject.split(" ")[2].split("/")[0]
        if objects[name][0] != hba:
            return f"left: the storage object {name} is now at {objects[name][0]}, not {hba}"
        users = self._view.exports().get(f"{hba}/{name}", [])
        if users:
            return f"left: exported by {', '.join(users)}"
        lio.delete_storage_object_at(hba, name)
        return "cleared"

    def _resave(self, f: Finding, lio: LioWriter, sos: dict[str, dict[str, Any] | None],
                targets: dict[str, dict[str, Any] | None]) -> str:
        iqn = contract.target_iqn(f.volume_id, self._prefix)
        so_dump, target_dump = lio.dump(f.volume_id, iqn)
        if so_dump is None or target_dump is None:
            return "left: LIO lacks part of it now; the controller's start restores it"
        sos[f.volume_id], targets[iqn] = so_dump, target_dump
        return ""  # the saved config's write gives the result

    def _write_saved(self, sos: dict[str, dict[str, Any] | None], targets: dict[str, dict[str, Any] | None]) -> str:
        SavedConfig(self._saveconfig).update(storage_objects=sos, targets=targets)
        return "cleared"

    def _delete_data(self, f: Finding, delete_data: bool) -> str:
        if not delete_data:
            return "left: pool data is deleted only with --delete-data"
        pool_name = f.subject.rsplit(" in pool ", 1)[1]
        pool = self._pools[pool_name]
        where = pool.items().get(f.volume_id)
        if where is None:
            return "cleared (gone meanwhile)"
        served, unknown = self._served(self._view.storage_objects())
        if _identity(where) in served:
            return "left: LIO serves it; clear its storage object first"
        if unknown:
            return (f"left: what LIO's storage objects {', '.join(unknown[:3])} serve cannot be told, so neither can "
                    "whether this is one")
        if contract.is_snapshot_id(f.volume_id):
            pool.release_snapshot(f.volume_id)
        else:
            pool.release(f.volume_id)
        return "cleared"
