"""What Probe reports: whether each plugin can do its job right now (not merely that it runs)."""

from __future__ import annotations

from pathlib import Path

from csi_iscsi.errors import CsiIscsiError
from csi_iscsi.host.runner import Runner

CONFIGFS_TARGET = Path("/sys/kernel/config/target")


def node_ready(runner: Runner) -> tuple[bool, str]:
    try:
        runner.run(["iscsiadm", "--version"], timeout=10)
        runner.run(["pgrep", "-x", "iscsid"], timeout=10)
    except CsiIscsiError as exc:
        return False, f"iscsiadm/iscsid not usable: {exc}"
    return True, "ready"
