"""`csi-iscsi doctor` on the target node: what no controller record owns, found in live LIO
(configfs), the saved LIO config and the pools; and records with nothing behind them.

Ownership is the controller's records: a volume's record is written before any of its LIO objects
or pool data is made and removed only after all of them are gone, so a target, storage object,
saved entry or pool item under a volume id with no record was made by hand, restored at boot from
a saved entry a crash left, or left by a crash of another version. An unreadable record still owns
its volume.

The controller alone changes LIO and the saved config, and keeps the saved config in memory: a
fix made beside it would be undone (or would undo one of its writes). So --fix runs only while the
controller is stopped, holding its locks; a dry run reads only and is safe at any time.

A missing record alone proves nothing on a LIO that another controller (another state directory and
saved config) also uses: only LIO objects this controller's own saved config names are fixed.
Everything else without a record is reported and left. Nothing with ACLs or a session is removed,
and pool data never: a pool item without a record is still someone's bytes, and what a lost
record, a restored backup or a `targetcli` save into the same file leave all look alike. Doctor
reports it, for a person to judge. Removing LIO objects loses no data: a controller that did own
them restores them at its start from its record and saved config."""

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


NOT_OURS = ("not in this controller's saved config either: another controller's on this LIO, or made by hand "
            "(doctor leaves it)")


class TargetDoctor:
    def __init__(self, controller_dir: Path, view: LioView, saveconfig: Path, pools: Mapping[str, Pool], *,
                 prefix: str = contract.DEFAULT_TARGET_IQN_PREFIX, sysfs: Path = Path("/sys")) -> None:
        self._dir = controller_dir
        self._view = view
        self._saveconfig = saveconfig
        self._pools = pools
        self._prefix = prefix
        self._sys = sysfs

    def _owned(self) -> tuple[set[str], set[str], RecordStore]:
        """(volume ids, snapshot ids) with a record, readable or not, and the volume records."""
        records = RecordStore(self._dir, readonly=True)
        snapshots = SnapshotStore(self._dir, readonly=True)
        volumes = {r.volume_id for r in records.all()} | records.unreadable
        snaps = {s.snapshot_id for s in snapshots.all()} | snapshots.unreadable
        return volumes, snaps, records

    def _saved(self) -> tuple[list[str], list[str]]:
        """The storage object names and target WWNs in the saved config (a malformed entry is
        skipped: it names nothing)."""
        if not self._saveconfig.exists():
            return [], []
        doc = json.loads(self._saveconfig.read_text() or "{}")
        if not isinstance(doc, dict):
            return [], []
        sos = [str(e["name"]) for e in doc.get("storage_objects") or [] if isinstance(e, dict) and "name" in e]
        targets = [str(e["wwn"]) for e in doc.get("targets") or [] if isinstance(e, dict) and "wwn" in e]
        return sos, targets

    def _ours(self, saved: tuple[list[str], list[str]] | None = None) -> set[str]:
        """Volume ids this controller's saved config holds an entry of: its own, record or not."""
        sos, targets = saved if saved is not None else self._saved()
        return {n for n in sos if contract.is_volume_id(n)} | \
            {v for w in targets if (v := contract.volume_id_of(w)) and w == contract.target_iqn(v, self._prefix)}

    def _live_targets(self) -> list[str]:
        """Targets of exactly the driver's form under this prefix."""
        return [iqn for iqn in self._view.target_dirs(self._prefix + ":")
                if (v := contract.volume_id_of(iqn)) and iqn == contract.target_iqn(v, self._prefix)]

    def find(self) -> list[Finding]:
        volumes, snapshots, records = self._owned()
        saved_sos, saved_targets = saved = self._saved()  # read and parsed once per look
        ours = self._ours(saved)
        findings: list[Finding] = []
        exports = self._view.exports()
        objects = self._view.storage_objects()
        live = self._live_targets()
        for iqn in live:
            vid = contract.volume_id_of(iqn)
            if vid in volumes:
                continue
            sessions = self._view.sessions(iqn)
            acls = self._view.all_acls(iqn)
            why = "no volume record names it (made by hand, or restored at boot from a saved entry a crash left)"
            why += f"; ACLs for {', '.join(acls)}" if acls else ""
            why += "; whether an initiator is logged in cannot be told" if sessions is None else \
                (f"; logged in now: {', '.join(sessions)}" if sessions else "")
            findings.append(Finding(TARGET, f"target {iqn}", vid, why if vid in ours else f"{why}; {NOT_OURS}",
                                    "delete the target (its portals and LUN), unless it has ACLs or an initiator is "
                                    "logged in" if vid in ours else ""))
        for name, places in sorted(objects.items()):
            if not contract.is_volume_id(name) or name in volumes:
                continue
            for hba, backing in places:
                users = exports.get(f"{hba}/{name}", [])
                why = "no volume record names it" + (f"; exported by {', '.join(users)}" if users else "")
                findings.append(Finding(OBJECT, f"storage object {hba}/{name} over {backing or '?'}", name,
                                        why if name in ours else f"{why}; {NOT_OURS}",
                                        "delete the storage object (not its data), once nothing exports it"
                                        if name in ours else ""))
        for name in saved_sos:
            if contract.is_volume_id(name) and name not in volumes:
                findings.append(Finding(SAVED, f"saved storage object {name} in {self._saveconfig}", name,
                                        "no volume record names it: a boot would make it again in LIO",
                                        "drop the entry from the saved config, unless its live object stays"))
        for wwn in saved_targets:
            vid = contract.volume_id_of(wwn)
            if vid and wwn == contract.target_iqn(vid, self._prefix) and vid not in volumes:
                findings.append(Finding(SAVED, f"saved target {wwn} in {self._saveconfig}", vid,
                                        "no volume record names it: a boot would make it again in LIO",
                                        "drop the entry (with any CHAP secret it holds) from the saved config, unless "
                                        "its live target stays"))
        served, unknown = self._served(objects)
        for pool in self._pools.values():
            for item, where in pool.items().items():
                if item in volumes or item in snapshots:
                    continue
                why = "no volume or snapshot record names it"
                if _identity(where) in served:
                    why += "; LIO or a loop device serves it"
                elif unknown:
                    why += f"; whether it is served cannot be told ({', '.join(unknown[:3])} back onto what?)"
                # Reported only, whoever's it looks: what a lost record, a saved config restored from
                # backup or a `targetcli` save into the same file leave all look alike, and deleted
                # bytes do not come back. A person deletes it, with the pool's own tools.
                findings.append(Finding(DATA, f"{where} in pool {pool.name}", item,
                                        why if item in ours else f"{why}; {NOT_OURS}", ""))
        for record in records.all():
            findings += self._record_findings(record.volume_id, record.state, objects, set(live), set(saved_sos),
                                              set(saved_targets))
        return findings

    def _served(self, objects: Mapping[str, list[tuple[str, str]]]) -> tuple[set[tuple[int, int]], list[str]]:
        """The files and block devices LIO's storage objects and the loop devices serve, by
        identity (a path may be spelled through a symlink), and what serves something that cannot
        be told."""
        served, unknown = set(), []
        backings = [(f"{hba}/{name}", backing) for name, places in objects.items() for hba, backing in places]
        for loop in sorted(self._sys.glob("block/loop*/loop/backing_file")):
            try:
                backings.append((loop.parts[-3], loop.read_text().strip()))
            except OSError:
                continue  # detached meanwhile
        for what, backing in backings:
            ident = _identity(backing) if backing else None
            if ident is None:
                unknown.append(what)
            else:
                served.add(ident)
        return served, unknown

    def _record_findings(self, vid: str, state: str, objects: Mapping[str, list[tuple[str, str]]], live: set[str],
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
            return [Finding(RECORD, path, vid, "exported in LIO but missing from the saved config: a boot would "
                            "leave it to the controller, which cannot restore CHAP ACLs", "save its live LIO objects "
                            "to the saved config")]
        return []

    def fix(self, findings: list[Finding], lio: LioWriter) -> list[Finding]:
        """Clear what find() reported, targets before storage objects, live LIO before the one
        write of the saved config; looked at again before each step. Pool data is never deleted.
        Call only with the controller stopped (its locks held). One failure is its finding's
        result."""
        volumes, snapshots, _ = self._owned()
        ours = self._ours()  # read before the saved config is rewritten
        order = {TARGET: 0, OBJECT: 1, SAVED: 2, RECORD: 3}
        done: dict[int, Finding] = {}
        # Saved entries to write (a dump) or drop (None), in one write of the saved config.
        sos: dict[str, dict[str, Any] | None] = {}
        targets: dict[str, dict[str, Any] | None] = {}
        saved_at: list[int] = []
        # A live object that stays keeps its saved entry, or a boot would remake the others' half.
        left: dict[str, set[str]] = {TARGET: set(), OBJECT: set()}
        for index, f in sorted(enumerate(findings), key=lambda pair: order.get(pair[1].kind, 9)):
            if not f.fix:
                done[index] = replace(f, result="reported only")
            elif f.kind == RECORD:
                done[index] = replace(f, result=self._try(partial(self._resave, f, lio, sos, targets)))
                saved_at.append(index)
            elif f.volume_id in volumes or f.volume_id in snapshots:
                done[index] = replace(f, result="left: a record names it now")
            elif f.volume_id not in ours:
                done[index] = replace(f, result="left: not in this controller's saved config")
            elif f.kind == TARGET:
                done[index] = replace(f, result=self._try(partial(self._delete_target, f, lio)))
            elif f.kind == OBJECT:
                done[index] = replace(f, result=self._try(partial(self._delete_object, f, lio)))
            elif f.kind == SAVED:
                kind, key = (TARGET, f.subject.split(" ")[2]) if f.subject.startswith("saved target ") else \
                    (OBJECT, f.subject.split(" ")[3])
                # A target that stays keeps both entries (its LUN names the object); an object that
                # stays keeps its own, while a deleted target's entry goes (a boot would remake it).
                if f.volume_id in left[TARGET] or (kind == OBJECT and f.volume_id in left[OBJECT]):
                    done[index] = replace(f, result="left: what it saves stays live in LIO")
                    continue
                (targets if kind == TARGET else sos)[key] = None
                saved_at.append(index)
                done[index] = f
            if f.kind in left and not done[index].result.startswith("cleared"):
                left[f.kind].add(f.volume_id)
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
        if iqn not in self._live_targets():
            return "cleared (gone meanwhile)"
        acls = self._view.all_acls(iqn)
        if acls is None:
            return "left: its ACLs cannot be read"
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
        hba = f.subject.split(" ")[2].split("/")[0]
        if hba not in [h for h, _ in self._view.storage_objects().get(name, [])]:
            return "cleared (gone meanwhile)"
        if hba.rsplit("_", 1)[0] not in ("fileio", "iblock"):
            return f"left: a {hba.rsplit('_', 1)[0]} storage object; doctor deletes fileio and block ones only"
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
