"""`csi-iscsi status`: one view of every volume on this host, the node side, the target side or
both, as text for a person or JSON for tools. Exit 0 when every volume shown is healthy, 1 when one
is not, 2 when nothing could be read."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.ops.node_status import NodeStatus, read_node_status

if TYPE_CHECKING:  # the target side's modules are imported only where it is shown
    from csi_iscsi.ops.target_status import TargetStatus

CONFIGFS = Path("/sys/kernel/config/target")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render_node(status: NodeStatus, out: TextIO) -> None:
    for v in status.volumes:
        print(f"volume {v.volume_id}  node side, {v.phase}, {v.access_type}"
              f"{' ' + v.fs_type if v.access_type == 'mount' else ''}, device {v.device or '-'}", file=out)
        print(f"  target {v.target_iqn}  LUN {v.lun}  WWID {v.wwid}", file=out)
        if v.map is not None:
            print(f"  map {v.map.name} {v.map.dm or '-'}  {v.map.paths} paths  {v.map.dm_state or '-'}  "
                  f"queueing {v.map.queueing or '-'}", file=out)
        for p in v.paths:
            session = f"session {p.session} {p.session_state}" if p.session is not None else "no session"
            device = f"{p.device} {p.device_state}" if p.device else "no device"
            mp = f"{p.dm_state}/{p.checker}" if p.dm_state else "-"
            errors = f"io errors {p.io_errors}" if p.io_errors is not None else ""
            print(f"  path {p.portal}  {session}  {device}  multipath {mp}  {errors}".rstrip(), file=out)
        print(f"  staging {v.staging_path} ({'mounted' if v.staging_mounted else 'not mounted'})", file=out)
        for pod in v.pod_mounts:
            print(f"  pod {pod}", file=out)
        print(f"  condition: {'ABNORMAL: ' if v.abnormal else ''}{v.condition}", file=out)
    for note in status.notes:
        print(f"note: {note}", file=out)


def render_target(status: TargetStatus, out: TextIO) -> None:
    for v in status.volumes:
        print(f"volume {v.volume_id}  target side, {v.state}, {v.name!r}, pool {v.pool}, {_size(v.capacity_bytes)}, "
              f"auth {v.authentication}" + (f", from {v.content_source}" if v.content_source else ""), file=out)
        print(f"  target {v.target_iqn}  LUN {v.lun}  WWID {v.wwid}  data {v.data}", file=out)
        for a in v.acls:
            chap = "mutual CHAP" if a.mutual_chap else ("CHAP" if a.chap else "no CHAP")
            print(f"  acl {a.initiator}  node {a.node or '(none recorded)'}  {'ro' if a.readonly else 'rw'}  {chap}",
                  file=out)
        print(f"  condition: {'ABNORMAL: ' if v.abnormal else ''}{v.condition}", file=out)
    for note in status.notes:
        print(f"note: {note}", file=out)


def add_parser(sub: Any) -> None:
    _arguments(sub.add_parser("status", help="what this host holds of each volume (reads only)"))


def main(argv: list[str]) -> int:
    """`csi-iscsi status ...` without the serving stack's imports (a third of a second natively,
    seconds under emulation): the entry point sends it here before importing the CLI."""
    import logging

    # A fixed width: argparse would otherwise import shutil to ask the terminal, once per argument.
    parser = argparse.ArgumentParser(prog="csi-iscsi status", description=__doc__,
                                     formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100))
    _arguments(parser)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return run(parser.parse_args(argv))


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_ids", nargs="*", metavar="VOLUME_ID", help="only these volumes (default: all)")
    p.add_argument("--json", action="store_true", help="JSON for tools instead of text")
    p.add_argument("--side", choices=["auto", "node", "target"], default="auto",
                   help="auto: the node side where <state-dir>/node exists, the target side where "
                        "<state-dir>/controller exists and LIO is loaded")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/csi-iscsi"))
    p.add_argument("--host-pid", type=int, default=None,
                   help="run multipathd in this PID's namespaces and read its mounts (1 in the plugin's container)")
    p.add_argument("--initiator-name-file", type=Path, default=Path("/etc/iscsi/initiatorname.iscsi"))
    p.add_argument("--initiator-iqn", default="", help="the node plugin's --initiator-iqn, if it was given one")
    p.add_argument("--pool", action="append", default=[], metavar="SPEC",
                   help="the controller's pools (its --pool values), to check each volume's data")
    p.add_argument("--portal", action="append", default=[], help="the controller's portals, to check the targets'")
    p.add_argument("--target-iqn-prefix", default=None)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    node_dir, target_dir = args.state_dir / "node" / "volumes", args.state_dir / "controller" / "volumes"
    want_node = args.side == "node" or (args.side == "auto" and node_dir.is_dir())
    want_target = args.side == "target" or (args.side == "auto" and target_dir.is_dir() and CONFIGFS.is_dir())
    if not (want_node or want_target):
        print(f"nothing to show: neither {node_dir} nor {target_dir} (with LIO loaded) is on this host; "
              "pass --state-dir or --side", file=sys.stderr)
        return 2
    runner = SubprocessRunner(host_pid=args.host_pid)
    node: NodeStatus | None = None
    target: TargetStatus | None = None
    try:
        if want_node:
            from csi_iscsi.host.initiator import read_initiator_name

            try:
                initiator = read_initiator_name(args.initiator_name_file, args.initiator_iqn)
            except CsiIscsiError:
                initiator = ""  # every session is shown, whichever initiator it presents
            mountinfo = Path(f"/proc/{args.host_pid}/mountinfo") if args.host_pid else Path("/proc/self/mountinfo")
            node = read_node_status(args.state_dir, runner, volume_ids=args.volume_ids, initiator=initiator,
                                    mountinfo=mountinfo)
        if want_target:
            from csi_iscsi import contract
            from csi_iscsi.lio.objects import LioView
            from csi_iscsi.lio.pools import parse_pool_spec
            from csi_iscsi.ops.target_status import read_target_status

            pools = {pool.name: pool for pool in (parse_pool_spec(s, runner, create=False) for s in args.pool)}
            target = read_target_status(args.state_dir, LioView(), pools, args.portal,
                                        prefix=args.target_iqn_prefix or contract.DEFAULT_TARGET_IQN_PREFIX,
                                        volume_ids=args.volume_ids)
    except Exception as exc:  # exit 1 means "a volume is abnormal"; a failure to read is 2
        print(f"status: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({"node": asdict(node) if node else None, "target": asdict(target) if target else None}, out,
                  indent=2)
        print(file=out)
    else:
        if target is not None:
            render_target(target, out)
        if node is not None:
            render_node(node, out)
        if not ((node and node.volumes) or (target and target.volumes)):
            print("no volumes", file=out)
    abnormal = any(v.abnormal for v in (node.volumes if node else [])) or \
        any(v.abnormal for v in (target.volumes if target else []))
    return 1 if abnormal else 0
