"""`csi-iscsi doctor` on the target node: flags in, findings out (csi_iscsi.ops.target_doctor)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from csi_iscsi import contract
from csi_iscsi.base.atomic import write_json_atomic
from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.ownership import StateDirLock
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.lio.objects import CONFIGFS, LioView
from csi_iscsi.lio.pools import parse_pool_spec
from csi_iscsi.lio.saveconfig import DEBIAN_SAVE_FILE
from csi_iscsi.ops.target_doctor import TargetDoctor

IDENTITY_FILE = "identity.json"
DEFAULT_POOL = "name=default,type=fileio,path=/var/lib/csi-iscsi/pool"


def record_controller(controller_dir: Path, pools: list[str], prefix: str, saveconfig: Path) -> None:
    """What the controller serves with, for csi-iscsi doctor on this node: its pools, target IQN
    prefix and saved config, whatever the flags given to doctor say."""
    value = {"pools": pools, "target_iqn_prefix": prefix, "saveconfig": str(saveconfig)}
    if read_controller(controller_dir) != value:
        write_json_atomic(controller_dir / IDENTITY_FILE, value)


def read_controller(controller_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((controller_dir / IDENTITY_FILE).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def run_target(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    controller_dir = args.state_dir / "controller"
    if not (controller_dir / ".lock").exists() or not (controller_dir / "volumes").is_dir():
        # With the wrong directory every volume would look orphaned: refuse, never guess.
        print(f"doctor: {controller_dir} is not a controller's state directory (no .lock and volumes/ in it); pass "
              "the controller's --state-dir", file=sys.stderr)
        return 2
    recorded = read_controller(controller_dir)
    specs = list(args.pool) or list(recorded.get("pools") or [DEFAULT_POOL])
    prefix = args.target_iqn_prefix if args.target_iqn_prefix != contract.DEFAULT_TARGET_IQN_PREFIX else \
        str(recorded.get("target_iqn_prefix") or args.target_iqn_prefix)
    saveconfig = args.saveconfig if args.saveconfig != DEBIAN_SAVE_FILE else \
        Path(str(recorded.get("saveconfig") or args.saveconfig))
    runner = SubprocessRunner(host_pid=args.host_pid)
    lock = StateDirLock(controller_dir, "csi-iscsi doctor --fix")
    if args.fix and not lock.try_acquire():
        # The controller keeps the saved config in memory and alone drives configfs: a fix beside it
        # would be undone by its next write, or undo one of its own.
        print(f"doctor: the controller is running ({lock.holder()}): --fix on the target node needs it stopped "
              "(scale the controller to 0 replicas); a dry run works beside it", file=sys.stderr)
        return 2
    try:
        pools = {pool.name: pool for pool in (parse_pool_spec(s, runner, create=False) for s in specs)}
        doctor = TargetDoctor(controller_dir, LioView(CONFIGFS), saveconfig, pools, prefix=prefix)
        findings = doctor.find()
        if args.fix and findings:
            from csi_iscsi.lio.objects import Lio

            findings = doctor.fix(findings, Lio(), delete_data=args.delete_data)
    except (CsiIscsiError, OSError, ValueError) as exc:
        print(f"doctor: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
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
