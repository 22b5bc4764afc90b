"""csi-iscsi doctor on the target node, over a configfs tree shaped like the kernel's, a real
fileio pool directory, real record files and a real saved config: each orphan kind found, --fix
clears only LIO objects its controller's saved config names, in order, nothing in use and never data, and
never a live volume's part. The same is proven on real LIO in tests/testbed/test_target_doctor.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from csi_iscsi import contract
from csi_iscsi.base.ownership import StateDirLock
from csi_iscsi.lio.api import READY, SnapshotRecord, VolumeRecord
from csi_iscsi.lio.objects import LioView
from csi_iscsi.lio.pools import FileioPool
from csi_iscsi.lio.records import RecordStore
from csi_iscsi.lio.snapshot_records import SnapshotStore
from csi_iscsi.ops.target_doctor import DATA, OBJECT, RECORD, SAVED, TARGET, TargetDoctor

PREFIX = contract.DEFAULT_TARGET_IQN_PREFIX
LIVE = contract.volume_id_for_name("pvc-live")
ORPHAN = contract.volume_id_for_name("pvc-orphan")  # target + object + saved entries + file, no record
LONE = contract.volume_id_for_name("pvc-lone")  # an unexported storage object only
BUSY = contract.volume_id_for_name("pvc-busy")  # an orphan target with an ACL, an initiator logged in
DYN = contract.volume_id_for_name("pvc-dyn")  # an orphan target without ACLs, one let in without an ACL
BLIND = contract.volume_id_for_name("pvc-blind")  # an orphan target whose sessions cannot be read
FOREIGN = contract.volume_id_for_name("pvc-foreign")  # no record, not in this controller's saved config
UNSAVED = contract.volume_id_for_name("pvc-unsaved")  # ready and live, missing from the saved config
BARE = contract.volume_id_for_name("pvc-bare")  # ready, LIO lacks its objects
SNAP = contract.snapshot_id_for_name("snap-kept")
INITIATOR = "iqn.1993-08.org.debian:01:node1"


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cfs = tmp / "configfs"
        self.state = tmp / "state"
        self.controller = self.state / "controller"
        self.pool_dir = tmp / "pool"
        self.pool_dir.mkdir()
        self.saveconfig = tmp / "saveconfig.json"
        self.pool = FileioPool("default", self.pool_dir)
        self._hba = 0
        self.controller.mkdir(parents=True)
        (self.controller / ".lock").touch()

    def record(self, vid: str) -> None:
        RecordStore(self.controller).put(VolumeRecord(vid, f"pvc-{vid[-4:]}", "default", 1 << 20, "mount",
                                                      ("SINGLE_NODE_WRITER",), {}, state=READY))

    def data(self, item: str) -> Path:
        path = self.pool_dir / f"{item}.img"
        path.write_bytes(b"x")
        return path

    def storage_object(self, name: str) -> Path:
        self._hba += 1
        so = self.cfs / "core" / f"fileio_{self._hba}" / name
        so.mkdir(parents=True)
        (so / "udev_path").write_text(f"{self.pool_dir / (name + '.img')}\n")
        return so

    def target(self, vid: str, so: Path | None, session: bool = False, acl: bool = True,
               dynamic: str = "") -> Path:
        tpg = self.cfs / "iscsi" / contract.target_iqn(vid) / "tpgt_1"
        (tpg / "lun" / "lun_0").mkdir(parents=True)
        (tpg / "acls").mkdir()
        (tpg / "dynamic_sessions").write_text(dynamic)
        if so is not None:
            os.symlink(so, tpg / "lun" / "lun_0" / "0123456789")
        if acl:
            acl_dir = tpg / "acls" / INITIATOR
            acl_dir.mkdir(parents=True)
            (acl_dir / "info").write_text(f"InitiatorName: {INITIATOR}\n" if session else
                                          f"No active iSCSI Session for Initiator Endpoint: {INITIATOR}\n")
        return tpg

    def save(self, vids: list[str], extra_targets: tuple[str, ...] = ()) -> None:
        self.saveconfig.write_text(json.dumps({
            "fabric_modules": [],
            "storage_objects": [{"name": v, "plugin": "fileio"} for v in vids] + [{"name": "admin-disk"}],
            "targets": [{"wwn": w, "tpgs": [{"tag": 1}]} for w in [*map(contract.target_iqn, vids), *extra_targets]]
            + [{"wwn": "iqn.2003-01.org.admin:disk", "tpgs": []}]}))

    def doctor(self) -> TargetDoctor:
        return TargetDoctor(self.controller, LioView(self.cfs), self.saveconfig, {"default": self.pool}, prefix=PREFIX)

    def whole(self, vid: str, saved: bool = True) -> None:
        self.record(vid)
        self.data(vid)
        self.target(vid, self.storage_object(vid), session=True)


class FakeLio:
    """Deletes in the fake configfs what rtslib would delete in the real one."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls: list[str] = []

    def delete_target(self, iqn: str) -> None:
        self.calls.append(f"delete_target {iqn}")
        shutil.rmtree(self.world.cfs / "iscsi" / iqn)

    def delete_storage_object_at(self, hba: str, name: str) -> None:
        self.calls.append(f"delete_storage_object {name}")
        shutil.rmtree(self.world.cfs / "core" / hba / name)

    def dump(self, storage_object: str, iqn: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        self.calls.append(f"dump {storage_object}")
        return {"name": storage_object, "plugin": "fileio"}, {"wwn": iqn, "tpgs": [{"tag": 1}]}


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.whole(LIVE)
    w.whole(UNSAVED)
    w.record(BARE)
    w.data(BARE)
    w.data(ORPHAN)
    w.target(ORPHAN, w.storage_object(ORPHAN), acl=False)
    lone_backing = w.tmp / "lone-backing.img"  # made by hand over a file outside the pools
    lone_backing.write_bytes(b"x")
    (w.storage_object(LONE) / "udev_path").write_text(f"{lone_backing}\n")
    w.target(BUSY, None, session=True)
    w.target(DYN, None, acl=False, dynamic=INITIATOR + "\n")
    blind = w.target(BLIND, None, acl=False)
    (blind / "dynamic_sessions").unlink()
    (blind / "attrib").mkdir()
    (blind / "attrib" / "generate_node_acls").write_text("1\n")  # demo mode, and no way to see its sessions
    SnapshotStore(w.controller).put(SnapshotRecord(SNAP, "snap-kept", LIVE, "default", 1 << 20, created_ns=1,
                                                   state=READY))
    w.data(SNAP)
    # Another controller's on the same LIO (or made by hand): its own saved config, not this one.
    w.data(FOREIGN)
    w.target(FOREIGN, w.storage_object(FOREIGN), acl=False)
    w.save([LIVE, BARE, ORPHAN, BUSY, DYN, BLIND], extra_targets=(f"{PREFIX}:x:{ORPHAN}",))
    return w


def kinds(findings: list[Any]) -> list[tuple[str, str]]:
    return sorted((f.kind, f.volume_id) for f in findings)


def test_each_orphan_kind_is_found_and_no_live_volume_part(world: World) -> None:
    findings = world.doctor().find()
    assert kinds(findings) == sorted([
        (TARGET, ORPHAN), (TARGET, BUSY), (TARGET, DYN), (TARGET, BLIND), (TARGET, FOREIGN), (OBJECT, ORPHAN),
        (OBJECT, LONE), (OBJECT, FOREIGN), (DATA, ORPHAN), (DATA, FOREIGN), (RECORD, UNSAVED), (RECORD, BARE)]
        + [(SAVED, v) for v in (ORPHAN, BUSY, DYN, BLIND) for _ in range(2)])
    by = {(f.kind, f.volume_id): f for f in findings}
    assert f"ACLs for {INITIATOR.lower()}; logged in now: {INITIATOR.lower()}" in by[TARGET, BUSY].why
    assert "logged in now: " + INITIATOR in by[TARGET, DYN].why
    assert "whether an initiator is logged in cannot be told" in by[TARGET, BLIND].why
    assert f"exported by iscsi {contract.target_iqn(ORPHAN)} lun_0" in by[OBJECT, ORPHAN].why
    assert "LIO or a loop device serves it" in by[DATA, ORPHAN].why
    assert by[RECORD, BARE].why.startswith("ready, and LIO lacks its storage object and target")
    # Without a record and outside this controller's saved config: reported, never fixed.
    assert all(by[kind, FOREIGN].fix == "" and "another controller's" in by[kind, FOREIGN].why
               for kind in (TARGET, OBJECT, DATA))
    assert by[OBJECT, LONE].fix == ""  # made by hand, in no saved config
    assert by[RECORD, BARE].fix == ""  # the controller's start restores it, doctor does not
    assert "missing from the saved config" in by[RECORD, UNSAVED].why
    assert all(LIVE not in f.subject and f.volume_id not in (LIVE, SNAP) for f in findings)


def test_an_unreadable_record_still_owns_its_volume(world: World) -> None:
    (world.controller / "volumes" / f"{ORPHAN}.json").write_text("{not json")
    assert ORPHAN not in {f.volume_id for f in world.doctor().find()}


def test_fix_clears_in_order_leaves_what_is_in_use_and_data_without_the_flag(world: World) -> None:
    doctor = world.doctor()
    lio = FakeLio(world)
    done = doctor.fix(doctor.find(), lio)
    result: dict[tuple[str, str], list[str]] = {}
    for f in done:
        result.setdefault((f.kind, f.volume_id), []).append(f.result)
    assert lio.calls.index(f"delete_target {contract.target_iqn(ORPHAN)}") < \
        lio.calls.index(f"delete_storage_object {ORPHAN}")  # the target first, then what it exported
    assert [c for c in lio.calls if c.startswith("delete_target")] == [f"delete_target {contract.target_iqn(ORPHAN)}"]
    assert result[TARGET, BUSY][0].startswith(f"left: it has ACLs for {INITIATOR.lower()}")
    assert result[TARGET, DYN] == [f"left: logged in by {INITIATOR}; run csi-iscsi doctor --fix on that node (or "
                                   "log it out) first"]
    assert result[TARGET, BLIND] == ["left: whether an initiator is logged in cannot be told (configfs could not be "
                                     "read)"]
    assert result[TARGET, ORPHAN] == result[OBJECT, ORPHAN] == ["cleared"]
    assert result[TARGET, FOREIGN] == result[OBJECT, FOREIGN] == result[OBJECT, LONE] == ["reported only"]
    assert result[SAVED, ORPHAN] == ["cleared", "cleared"]
    assert result[RECORD, UNSAVED] == ["cleared"]
    assert set(result[SAVED, BUSY]) == {"left: what it saves stays live in LIO"}
    assert result[DATA, ORPHAN] == ["reported only"]  # never deleted: a person judges pool data
    assert (world.pool_dir / f"{ORPHAN}.img").exists()
    assert result[RECORD, BARE] == ["reported only"]
    saved = json.loads(world.saveconfig.read_text())
    assert [so["name"] for so in saved["storage_objects"]] == sorted([LIVE, BARE, UNSAVED, BUSY, DYN, BLIND,
                                                                      "admin-disk"])
    assert [t["wwn"] for t in saved["targets"]] == sorted(
        [contract.target_iqn(v) for v in (LIVE, BARE, UNSAVED, BUSY, DYN, BLIND)] +
        [f"{PREFIX}:x:{ORPHAN}", "iqn.2003-01.org.admin:disk"])
    # The live volume and the snapshot are as they were; what is left is what was refused or only reported.
    assert (world.cfs / "iscsi" / contract.target_iqn(LIVE)).is_dir() and list(world.cfs.glob(f"core/*/{LIVE}"))
    assert (world.pool_dir / f"{LIVE}.img").exists() and (world.pool_dir / f"{SNAP}.img").exists()
    assert kinds(doctor.find()) == sorted(
        [(TARGET, BUSY), (TARGET, DYN), (TARGET, BLIND), (TARGET, FOREIGN), (OBJECT, FOREIGN), (OBJECT, LONE),
         (DATA, ORPHAN), (DATA, FOREIGN), (RECORD, BARE)]
        + [(SAVED, v) for v in (BUSY, DYN, BLIND) for _ in range(2)])


def test_fix_never_deletes_pool_data_and_says_when_lio_serves_it(world: World) -> None:
    doctor = world.doctor()
    # LIO names the file through a symlink: still the same file.
    link = world.tmp / "link"
    link.symlink_to(world.pool_dir)
    so = next(world.cfs.glob(f"core/*/{ORPHAN}"))
    (so / "udev_path").write_text(f"{link / (ORPHAN + '.img')}\n")
    found = doctor.find()
    assert "LIO or a loop device serves it" in next(f.why for f in found if (f.kind, f.volume_id) == (DATA, ORPHAN))
    for _ in range(2):  # a second run, with the object gone, still leaves the data
        done = doctor.fix(doctor.find(), FakeLio(world))
        assert {f.result for f in done if f.kind == DATA} == {"reported only"}
    assert all((world.pool_dir / f"{v}.img").exists() for v in (ORPHAN, FOREIGN, LIVE, SNAP))
    assert not list(world.cfs.glob(f"core/*/{ORPHAN}"))


def test_a_missing_saved_config_leaves_every_ready_volume_to_be_saved(world: World) -> None:
    world.saveconfig.unlink()
    found = world.doctor().find()
    assert {f.volume_id for f in found if f.kind == RECORD and "missing from the saved config" in f.why} == \
        {LIVE, UNSAVED}


def doctor_cli(world: World, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "csi_iscsi", "doctor", "--side", "target", "--state-dir",
                           str(world.state), "--configfs", str(world.cfs), *flags],
                          capture_output=True, text=True, timeout=120)


def test_fix_on_the_target_refuses_beside_the_controller_or_on_a_copy_of_its_directory(world: World) -> None:
    from csi_iscsi.ops.target_doctor_cli import record_controller

    record_controller(world.controller, [f"name=default,type=fileio,path={world.pool_dir}"], PREFIX,
                      world.saveconfig)
    # The dry run beside a running controller reads, with the settings the controller recorded.
    for who, lock in (("state", StateDirLock(world.controller, "controller")),
                      ("saved config", StateDirLock(world.tmp, "controller", "saveconfig.json.lock"))):
        lock.acquire()
        try:
            dry = doctor_cli(world, "--json")
            assert dry.returncode == 1, dry.stderr
            assert {(f["kind"], f["volume_id"]) for f in json.loads(dry.stdout)["findings"]} >= \
                {(TARGET, ORPHAN), (SAVED, ORPHAN), (DATA, ORPHAN)}
            proc = doctor_cli(world, "--fix")
            assert proc.returncode == 2 and "the controller is running" in proc.stderr, (who, proc.stderr)
        finally:
            lock.release()
    assert (world.cfs / "iscsi" / contract.target_iqn(ORPHAN)).is_dir()
    # A flag that contradicts what the controller recorded is refused, not half-used.
    proc = doctor_cli(world, "--target-iqn-prefix", "iqn.2000-01.com.example")
    assert proc.returncode == 2 and "is not the controller's" in proc.stderr
    # A copy of the state directory (its lock is free, and its records are old) is not the controller's.
    copy = world.tmp / "copy"
    shutil.copytree(world.state, copy)
    proc = subprocess.run([sys.executable, "-m", "csi_iscsi", "doctor", "--side", "target", "--fix", "--state-dir",
                           str(copy), "--configfs", str(world.cfs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not where the controller recorded it serves from" in proc.stderr
    # Without LIO's configfs nothing can be told.
    proc = subprocess.run([sys.executable, "-m", "csi_iscsi", "doctor", "--side", "target", "--state-dir",
                           str(world.state), "--configfs", str(world.tmp / "none")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "not loaded here" in proc.stderr
    assert (world.cfs / "iscsi" / contract.target_iqn(ORPHAN)).is_dir()


def test_fix_refuses_when_most_targets_look_orphaned(world: World) -> None:
    from csi_iscsi.ops.target_doctor_cli import record_controller

    record_controller(world.controller, [f"name=default,type=fileio,path={world.pool_dir}"], PREFIX,
                      world.saveconfig)
    for vid in (LIVE, UNSAVED):  # the records a wrong or emptied state directory would lack
        (world.controller / "volumes" / f"{vid}.json").unlink()
    proc = doctor_cli(world, "--fix")
    assert proc.returncode == 2 and "have no record" in proc.stderr and "--force-many" in proc.stderr, proc.stderr
    assert (world.cfs / "iscsi" / contract.target_iqn(ORPHAN)).is_dir()


def test_served_data_is_seen_through_a_second_object_of_the_name_and_a_loop_device_and_acls_in_any_tpg(
        world: World) -> None:
    sysfs = world.tmp / "sys"
    doctor = TargetDoctor(world.controller, LioView(world.cfs), world.saveconfig, {"default": world.pool},
                          prefix=PREFIX, sysfs=sysfs)
    lio = FakeLio(world)
    # The orphan's data is also served by an iblock object of the same name (over a loop device of it).
    loop = sysfs / "block" / "loop3" / "loop"
    loop.mkdir(parents=True)
    (loop / "backing_file").write_text(f"{world.pool_dir / (ORPHAN + '.img')}\n")
    second = world.cfs / "core" / "iblock_9" / ORPHAN
    second.mkdir(parents=True)
    (second / "udev_path").write_text("/dev/loop3\n")
    # And an ACL in a second TPG of the orphan target.
    (world.cfs / "iscsi" / contract.target_iqn(ORPHAN) / "tpgt_2" / "acls" / INITIATOR).mkdir(parents=True)
    done = doctor.fix(doctor.find(), lio)
    result = {(f.kind, f.subject.split(" ")[2] if f.kind == OBJECT else ""): f.result
              for f in done if f.volume_id == ORPHAN and f.kind in (TARGET, OBJECT, DATA)}
    assert result[TARGET, ""].startswith(f"left: it has ACLs for {INITIATOR.lower()}")
    assert (world.pool_dir / f"{ORPHAN}.img").exists()
    assert result[DATA, ""] == "reported only", result
    assert "LIO or a loop device serves it" in next(f.why for f in done if (f.kind, f.volume_id) == (DATA, ORPHAN))
