"""Named fault points between the side effects of every mutating call, for the crash matrix.

A point is a call `fault_point("stage.after_login")` placed where a crash or an error would leave
the host in a state of its own. Points are inert unless the environment variable CSI_ISCSI_FAULTS
names them when the process starts, e.g.

    CSI_ISCSI_FAULTS=stage.after_login=crash,create.after_lio=raise

`crash` kills the process on the spot (SIGKILL: no handler, no cleanup, as an OOM kill or a node
losing power would); `raise` raises an internal error there, as a failed command would. Each named
point fires once per process. With the variable unset, a point costs one dict lookup.

POINTS lists every point; docs/failure-modes.md has one row per point, and a unit test keeps the
code, the list and that table in step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from csi_iscsi.base.errors import Internal

ENV = "CSI_ISCSI_FAULTS"
ACTIONS = ("crash", "raise")

POINTS: tuple[str, ...] = (
    # Controller
    "create.after_record", "create.after_pool", "create.after_lio", "create.after_save",
    "delete.after_record", "delete.after_lio", "delete.after_save", "delete.after_pool",
    "publish.after_record", "publish.after_grant", "publish.after_save",
    "unpublish.after_revoke", "unpublish.after_save",
    "expand.after_pool", "expand.after_lio", "expand.after_save",
    "snapshot.after_record", "snapshot.after_pool",
    "delete_snapshot.after_record", "delete_snapshot.after_pool",
    # Node
    "stage.after_state", "stage.after_records", "stage.after_login", "stage.after_device",
    "stage.after_mkfs", "stage.after_mount",
    "unstage.after_umount", "unstage.after_flush", "unstage.after_devices", "unstage.after_logout",
    "unstage.after_records",
    "node_publish.after_mkdir", "node_publish.after_bind",
    "node_unpublish.after_umount",
    "node_expand.after_rescan", "node_expand.after_resize",
)

log = logging.getLogger(__name__)


class InjectedFault(Internal):
    """The error a `raise` fault point throws: what an unexpected failure at that step looks like."""


def parse(spec: str) -> dict[str, str]:
    """point=action pairs, comma-separated; unknown points or actions are an error, not ignored."""
    armed: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, sep, action = item.partition("=")
        if not sep or point not in POINTS or action not in ACTIONS:
            raise ValueError(f"{ENV}: {item!r} is not <point>=<{'|'.join(ACTIONS)}> with a known point")
        armed[point] = action
    return armed


_armed: dict[str, str] = parse(os.environ.get(ENV, ""))
_lock = threading.Lock()


def arm(spec: str) -> None:
    """Replace the armed points (tests in one process; plugins read the environment at start)."""
    global _armed
    armed = parse(spec)
    with _lock:
        _armed = armed


def fault_point(name: str) -> None:
    if not _armed:
        return
    with _lock:
        action = _armed.pop(name, None)
    if action is None:
        return
    log.warning("fault point %s: %s", name, action)
    if action == "crash":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {name}")
