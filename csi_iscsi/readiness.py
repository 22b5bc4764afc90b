"""What Probe reports: whether each plugin can do its job right now (not merely that it runs)."""

from __future__ import annotations

import os
from pathlib import Path

from csi_iscsi.errors import CsiIscsiError
from csi_iscsi.host.runner import Runner

CONFIGFS_TARGET = Path("/sys/kernel/config/target")


def controller_ready(pool_dir: Path, configfs_target: Path = CONFIGFS_TARGET) -> tuple[bool, str]:
    if not configfs_target.is_dir():
        return False, f"{configfs_target} is missing: configfs is not mounted or target_core_mod not loaded"
    if not pool_dir.is_dir() or not os.access(pool_dir, os.W_OK | os.X_OK):
        return False, f"pool directory {pool_dir} is missing or not writable"
    return True, "ready"


def node_ready(runner: Runner) -> tuple[bool, str]:
    try:
        runner.run(["iscsiadm", "--version"], timeout=10)
        runner.run(["pgrep", "-x", "iscsid"], timeout=10)
    except CsiIscsiError as exc:
        return False, f"iscsiadm/iscsid not usable: {exc}"
    return True, "ready"
