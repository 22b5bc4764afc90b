"""`csi-iscsi doctor [--fix]`: on a worker, what no stage state owns (csi_iscsi.ops.node_doctor);
on the target node, what no controller record owns (csi_iscsi.ops.target_doctor). Printed with why
and what --fix would do; with --fix, cleared. Exit 0 when nothing is found (or everything found was
cleared), 1 when something is left, 2 when the host could not be read."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.host.iscsiadm import SessionSettings
from csi_iscsi.host.node_volumes import NodeVolumes
from csi_iscsi.host.stage_state import StageStateStore
from csi_iscsi.ops.findings import Finding
from csi_iscsi.ops.node_doctor import NodeDoctor
from csi_iscsi.servicers.node import NodeIdentity


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", parents=parents,
                       help="find (and with --fix clear) what no volume owns on this worker or target node")
    p.add_argument("--fix", action="store_true",
                   help="clear what is provably orphaned, in the safe detach order (default: only report); on the "
                        "target node only while the controller is stopped")
    p.add_argument("--side", choices=["auto", "node", "target"], default="auto",
                   help="auto: the node side where <state-dir>/node exists, else the target side where "
                        "<state-dir>/controller exists")
    p.add_argument("--configfs", type=Path, default=Path("/sys/kernel/config/target"), help=argparse.SUPPRESS)
    p.add_argument("--force-many", action="store_true",
                   help="with --fix on the target node: clear even when most of the driver's LIO targets have no "
                        "record (what a wrong --state-dir looks like)")
    p.add_argument("--json", action="store_true", help="JSON for tools instead of text")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/csi-iscsi"))
    p.add_argument("--host-pid", type=int, default=None,
                   help="run the host's tools in this PID's namespaces and read its mounts (1 in the plugin's "
                        "container)")


def render(findings: list[Finding], fixing: bool, out: TextIO,
           nothing: str = "nothing found: every session, record, map and state on this node belongs to a staged "
                          "volume") -> None:
    if not findings:
        print(nothing, file=out)
    for f in findings:
        whose = f" (volume {f.volume_id})" if f.volume_id else ""
        print(f"{f.kind}: {f.subject}{whose}", file=out)
        print(f"  why: {f.why}", file=out)
        if fixing:
            print(f"  fix: {f.result}", file=out)
        else:
            print(f"  --fix would: {f.fix}" if f.fix else "  --fix leaves it (docs/operations.md says what to do)",
                  file=out)


def run(args: argparse.Namespace, make_volumes: Callable[[NodeIdentity, SubprocessRunner], NodeVolumes],
        identity: Callable[[], NodeIdentity], out: TextIO = sys.stdout) -> int:
    node_dir, controller_dir = args.state_dir / "node", args.state_dir / "controller"
    side = args.side
    if side == "auto":
        side = "node" if node_dir.is_dir() else "target" if controller_dir.is_dir() else ""
    if not side:
        print(f"doctor: neither {node_dir} nor {controller_dir} is on this host; pass the plugin's --state-dir",
              file=sys.stderr)
        return 2
    if side == "target":
        from csi_iscsi.ops.target_doctor_cli import run_target

        return run_target(args, out)
    code = run_node(args, make_volumes, identity, out)
    if args.side == "auto" and controller_dir.is_dir() and not args.json:
        print(f"note: {controller_dir} is here too: `csi-iscsi doctor --side target` looks at the target side",
              file=out)
    return code


def run_node(args: argparse.Namespace, make_volumes: Callable[[NodeIdentity, SubprocessRunner], NodeVolumes],
             identity: Callable[[], NodeIdentity], out: TextIO = sys.stdout) -> int:
    node_dir = args.state_dir / "node"
    if not (node_dir / ".lock").exists() or not (node_dir / "volumes").is_dir():
        # With the wrong directory every staged volume would look orphaned: refuse, never guess.
        print(f"doctor: {node_dir} is not a node plugin's state directory (no .lock and volumes/ in it); pass the "
              "node plugin's --state-dir", file=sys.stderr)
        return 2
    recorded = read_recorded_identity(node_dir)
    if recorded and not args.initiator_iqn:
        args.initiator_iqn = recorded  # the name the plugin serves with, whatever the flags here say
    elif recorded and args.initiator_iqn.lower() != recorded.lower():
        print(f"doctor: --initiator-iqn {args.initiator_iqn} is not the one the node plugin serves with "
              f"({recorded}); leave it out", file=sys.stderr)
        return 2
    if args.fix and not _host_pid_namespace():
        # The check that no process uses a device reads /proc: in a PID namespace of its own it
        # would see none of the host's processes.
        print("doctor: --fix needs the host's processes in /proc: run it in the node plugin's container with "
              "node.hostTools=true (hostPID), or on the host", file=sys.stderr)
        return 2
    runner = SubprocessRunner(host_pid=args.host_pid)
    mountinfo = Path(f"/proc/{args.host_pid}/mountinfo") if args.host_pid else Path("/proc/self/mountinfo")
    try:
        node = identity()
        initiator = node.node_id.initiator_iqn
        doctor = NodeDoctor(args.state_dir, runner, initiator=initiator,
                            iface=SessionSettings(initiator_name=initiator).iface, mountinfo=mountinfo)
        findings = doctor.find()
        if args.fix and findings:
            states = StageStateStore(args.state_dir / "node" / "volumes", readonly=True)
            findings = doctor.fix(findings, make_volumes(node, runner),
                                  VolumeLocks(args.state_dir / "node" / "locks", strict=True), states)
    except (CsiIscsiError, OSError) as exc:
        print(f"doctor: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({"fixed": bool(args.fix), "initiator": initiator, "findings": [asdict(f) for f in findings]}, out,
                  indent=2)
        print(file=out)
    else:
        print(f"node {node.node_id.node_name}, initiator {initiator}", file=out)
        render(findings, bool(args.fix), out)
    return exit_code(findings, bool(args.fix))


def exit_code(findings: list[Finding], fixing: bool) -> int:
    if fixing:  # what doctor only reports is not counted: a person checks it
        return 1 if any(f.fix and not f.result.startswith("cleared") for f in findings) else 0
    return 1 if findings else 0


IDENTITY_FILE = "identity.json"


def _host_pid_namespace(proc: Path = Path("/proc")) -> bool:
    """kthreadd is PID 2 only in the host's PID namespace."""
    try:
        return (proc / "2" / "comm").read_text().strip() == "kthreadd"
    except OSError:
        return False


def read_recorded_identity(node_dir: Path) -> str:
    """The initiator name the node plugin serves with, as it recorded it at start ('' if never)."""
    try:
        return str(json.loads((node_dir / IDENTITY_FILE).read_text()).get("initiator_iqn", ""))
    except (OSError, ValueError, AttributeError):
        return ""
