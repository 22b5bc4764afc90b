"""`csi-iscsi doctor` on the target node: flags in, findings out (csi_iscsi.ops.target_doctor)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from csi_iscsi import contract
from csi_iscsi.base.atomic import write_json_atomic
from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.ownership import StateDirLock
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.lio.objects import LioView
from csi_iscsi.lio.pools import parse_pool_spec
from csi_iscsi.lio.saveconfig import DEBIAN_SAVE_FILE
from csi_iscsi.ops.target_doctor import TARGET, TargetDoctor

IDENTITY_FILE = "identity.json"
DEFAULT_POOL = "name=default,type=fileio,path=/var/lib/csi-iscsi/pool"


def record_controller(controller_dir: Path, pools: list[str], prefix: str, saveconfig: Path) -> None:
    """What the controller serves with, for csi-iscsi doctor on this node: its pools, target IQN
    prefix and saved config, and the state directory it serves from (a copy of the directory
    elsewhere is not the controller's)."""
    value = {"pools": pools, "target_iqn_prefix": prefix, "saveconfig": str(saveconfig),
             "state_dir": os.path.realpath(controller_dir)}
    if read_controller(controller_dir) != value:
        write_json_atomic(controller_dir / IDENTITY_FILE, value)


def forget_controller(controller_dir: Path) -> None:
    """When the settings cannot be recorded, none stay: old ones would point doctor at another
    saved config than the one the controller locks."""
    with contextlib.suppress(OSError):
        (controller_dir / IDENTITY_FILE).unlink(missing_ok=True)


def read_controller(controller_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((controller_dir / IDENTITY_FILE).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _refuse(message: str) -> int:
    print(f"doctor: {message}", file=sys.stderr)
    return 2


def run_target(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    controller_dir = args.state_dir / "controller"
    if not (controller_dir / ".lock").exists() or not (controller_dir / "volumes").is_dir():
        # With the wrong directory every volume would look orphaned: refuse, never guess.
        return _refuse(f"{controller_dir} is not a controller's state directory (no .lock and volumes/ in it); pass "
                       "the controller's --state-dir")
    configfs = args.configfs
    if not (configfs / "core").is_dir() or not (configfs / "iscsi").is_dir():
        # Without LIO's configfs every record looks unexported and nothing looks served.
        return _refuse(f"LIO's iSCSI target is not loaded here ({configfs}/core and iscsi are missing): doctor "
                       "cannot tell what it serves")
    recorded = read_controller(controller_dir)
    specs = list(args.pool) or list(recorded.get("pools") or [DEFAULT_POOL])
    prefix, saveconfig = str(recorded.get("target_iqn_prefix") or args.target_iqn_prefix), \
        Path(str(recorded.get("saveconfig") or args.saveconfig))
    for flag, given, default, used in (("--target-iqn-prefix", args.target_iqn_prefix,
                                        contract.DEFAULT_TARGET_IQN_PREFIX, prefix),
                                       ("--saveconfig", str(args.saveconfig), str(DEBIAN_SAVE_FILE), str(saveconfig))):
        if given != default and given != used:
            return _refuse(f"{flag} {given} is not the controller's ({used}, in {controller_dir / IDENTITY_FILE}); "
                           "leave it out")
    if args.fix and recorded.get("state_dir") != os.path.realpath(controller_dir):
        # A copy of a state directory (an old stateDir, a backup) holds its own lock, so the lock
        # proves nothing about the running controller: its record of where it serves from does.
        return _refuse(f"{controller_dir} is not where the controller recorded it serves from "
                       f"({recorded.get('state_dir') or 'nothing recorded: start the controller once'}); --fix "
                       "acts only on the controller's own state directory")
    runner = SubprocessRunner(host_pid=args.host_pid)
    locks = [StateDirLock(controller_dir, "csi-iscsi doctor --fix"),
             StateDirLock(saveconfig.parent, "csi-iscsi doctor --fix", saveconfig.name + ".lock")]
    held: list[StateDirLock] = []
    try:
        if args.fix:
            for lock in locks:
                if not lock.try_acquire():
                    # The controller keeps the saved config in memory and alone drives configfs: a
                    # fix beside it would be undone by its next write, or undo one of its own.
                    return _refuse(f"the controller is running ({lock.holder()}, {lock.path}): --fix on the target "
                                   "node needs it stopped (scale the controller to 0 replicas); a dry run works "
                                   "beside it")
                held.append(lock)
        pools = {pool.name: pool for pool in (parse_pool_spec(s, runner, create=False) for s in specs)}
        view = LioView(configfs)
        doctor = TargetDoctor(controller_dir, view, saveconfig, pools, prefix=prefix)
        findings = doctor.find()
        if args.fix and findings:
            orphans = {f.volume_id for f in findings if f.kind == TARGET and f.fix}  # what it would act on
            live = len(view.target_dirs(prefix + ":"))
            if len(orphans) >= 3 and 2 * len(orphans) > live and not args.force_many:
                return _refuse(f"{len(orphans)} of the {live} targets {prefix}:* in LIO have no record in "
                               f"{controller_dir}: is that the controller's state directory, and its "
                               "--target-iqn-prefix? If it is, run again with --force-many")
            if str(configfs) != "/sys/kernel/config/target":
                return _refuse("--fix acts on the live LIO only (--configfs is for reading a copy)")
            from csi_iscsi.lio.objects import Lio

            findings = doctor.fix(findings, Lio(configfs))
    except (CsiIscsiError, OSError, ValueError) as exc:
        return _refuse(f"{type(exc).__name__}: {exc}")
    finally:
        for lock in held:
            lock.release()
    from csi_iscsi.ops.doctor import exit_code, render

    if args.json:
        json.dump({"side": "target", "fixed": bool(args.fix), "target_iqn_prefix": prefix,
                   "findings": [asdict(f) for f in findings]}, out, indent=2)
        print(file=out)
    else:
        print(f"target node, targets {prefix}:*, saved config {saveconfig}, pools {', '.join(sorted(pools))}",
              file=out)
        render(findings, bool(args.fix), out, nothing="nothing found: every LIO target and storage object, saved "
               "entry and pool item of the driver belongs to a volume or snapshot record, and every record is whole")
    return exit_code(findings, bool(args.fix))
