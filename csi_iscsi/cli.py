"""The csi-iscsi command: `csi-iscsi controller|node|all --endpoint ...`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from prometheus_client import REGISTRY, start_http_server

from csi_iscsi import __version__
from csi_iscsi.base.atomic import write_json_atomic
from csi_iscsi.base.errors import CsiIscsiError, FailedPrecondition
from csi_iscsi.base.locks import VolumeLocks
from csi_iscsi.base.metrics import declare_all
from csi_iscsi.base.ownership import StateDirLock
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.contract import (
    DEFAULT_TARGET_IQN_PREFIX,
    DEFAULT_ZONE,
    NODE_ID_MAX_BYTES,
    NODE_NAME_RE,
    NodeId,
    is_portal,
    is_target_iqn_prefix,
)
from csi_iscsi.health import HealthServer, grpc_answers
from csi_iscsi.host.attach import Attacher, AttachTimeouts
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.healer import Healer
from csi_iscsi.host.initiator import DEFAULT_FILE, read_initiator_name
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from csi_iscsi.host.mounts import MountTable
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.node_metrics import NodePathCollector, NodeSessionCollector
from csi_iscsi.host.node_volumes import NodeVolumes
from csi_iscsi.host.readiness import node_ready
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.host.stage_state import StageStateStore
from csi_iscsi.lio.pool_metrics import PoolCollector
from csi_iscsi.lio.pools import Pool, parse_pool_spec
from csi_iscsi.lio.saveconfig import DEBIAN_SAVE_FILE, SavedConfig
from csi_iscsi.lio.service import LioTargetService
from csi_iscsi.lio.target_metrics import TargetCounterCollector
from csi_iscsi.ops import doctor, status
from csi_iscsi.ops.doctor_loop import NODE_KINDS, TARGET_KINDS, DoctorLoop, NotYet
from csi_iscsi.ops.findings import Finding
from csi_iscsi.ops.node_doctor import NodeDoctor
from csi_iscsi.ops.target_doctor import NOT_OURS, TargetDoctor
from csi_iscsi.ops.target_doctor_cli import forget_controller, record_controller
from csi_iscsi.server import CsiServer, Services
from csi_iscsi.servicers.controller import ControllerServicer
from csi_iscsi.servicers.identity import IdentityServicer
from csi_iscsi.servicers.node import DeferredNode, NodeIdentity, NodeServicer

log = logging.getLogger("csi_iscsi")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csi-iscsi",
                                description="Kubernetes CSI driver for iSCSI volumes on LIO")
    p.add_argument("--version", action="version", version=f"csi-iscsi {__version__}")
    sub = p.add_subparsers(dest="mode", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
                        help="unix:///path.sock or tcp://host:port (env CSI_ENDPOINT)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    common.add_argument("--health-address", default="",
                        help="host:port for /healthz (liveness: the gRPC server answers) and /readyz (readiness, "
                             "with the reason); off if empty")
    common.add_argument("--metrics-address", default="",
                        help="host:port for Prometheus metrics; off if empty")
    common.add_argument("--grace-period", type=float, default=30.0,
                        help="seconds in-flight calls may finish after SIGTERM")
    common.add_argument("--workers", type=int, default=8)
    common.add_argument("--host-pid", type=int, default=None,
                        help="run the host's tools (iscsiadm, multipath, mkfs, mount; lvm on the target) in this "
                             "PID's namespaces via nsenter: 1 in a container with the host's PID namespace")
    common.add_argument("--doctor-interval", type=float, default=300.0,
                        help="seconds between dry runs of csi-iscsi doctor on this plugin's side, counted in "
                             "csi_iscsi_doctor_findings; 0 turns them off")
    common.add_argument("--state-dir", type=Path, default=Path("/var/lib/csi-iscsi"),
                        help="durable state on the host: <dir>/controller (volume records), <dir>/node (stage state)")

    controller = argparse.ArgumentParser(add_help=False)
    controller.add_argument("--pool", action="append", default=[], metavar="SPEC",
                            help="name=NAME,type=fileio,path=DIR[,overprovision=R] or "
                                 "name=NAME,type=lvm-thin,vg=VG,thinpool=LV[,overprovision=R]; repeatable, "
                                 "the first is the default (default: name=default,type=fileio,"
                                 "path=/var/lib/csi-iscsi/pool)")
    controller.add_argument("--portal", action="append", default=[],
                            help="ip:port the targets listen on; repeat for multipath")
    controller.add_argument("--target-iqn-prefix", default=DEFAULT_TARGET_IQN_PREFIX)
    controller.add_argument("--serve-zone", action="append", default=[],
                            help="topology zone whose nodes reach the portals; repeatable (default: default)")
    controller.add_argument("--saveconfig", type=Path, default=DEBIAN_SAVE_FILE,
                            help="the LIO config file restored at boot (Debian: rtslib-fb-targetctl)")

    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""),
                      help="Kubernetes node name (env NODE_NAME; default: the host name)")
    node.add_argument("--initiator-name-file", type=Path, default=DEFAULT_FILE)
    node.add_argument("--initiator-iqn", default="", help="override the initiator name file")
    node.add_argument("--zone", default=DEFAULT_ZONE, help="topology zone of this node")
    node.add_argument("--max-volumes", type=int, default=0, help="max volumes per node; 0 = no limit")
    node.add_argument("--multipath", choices=["required", "preferred", "off"], default="required",
                      help="without multipathd: fail the stage (required), use one path (preferred); "
                           "off never uses multipath")
    node.add_argument("--login-timeout", type=int, default=15, help="seconds per login attempt")
    node.add_argument("--login-retries", type=int, default=1, help="extra login attempts per portal")
    node.add_argument("--replacement-timeout", type=int, default=10,
                      help="seconds a dead path holds I/O before multipath fails over")
    node.add_argument("--noop-interval", type=int, default=5, help="seconds between iSCSI NOP-Out pings")
    node.add_argument("--noop-timeout", type=int, default=5, help="seconds before a NOP-Out ping counts as lost")
    node.add_argument("--device-timeout", type=float, default=30.0,
                      help="seconds to wait for the SCSI device and the multipath map after login")
    node.add_argument("--detach-timeout", type=float, default=60.0, help="bound on a whole detach")
    node.add_argument("--heal-interval", type=float, default=30.0,
                      help="seconds between self-heal passes over staged volumes (lost sessions, devices and "
                           "map paths are brought back); 0 turns self-healing off")
    node.add_argument("--heal-workers", type=int, default=4, help="volumes repaired at once by self-heal")

    sub.add_parser("controller", parents=[common, controller], help="serve Identity + Controller")
    sub.add_parser("node", parents=[common, node], help="serve Identity + Node")
    sub.add_parser("all", parents=[common, controller, node], help="serve all three (testbed, demos)")
    status.add_parser(sub)
    doctor.add_parser(sub, parents=[node, controller])
    return p


def _node_name(args: argparse.Namespace) -> str:
    """The parts of the node's identity that are configuration: wrong ones stop the plugin."""
    name = (args.node_name or socket.gethostname()).lower()
    if not NODE_NAME_RE.fullmatch(name):
        raise CsiIscsiError(f"node name {name!r} is not a valid Kubernetes node name")
    if args.max_volumes < 0:
        raise CsiIscsiError("--max-volumes must be >= 0")
    if args.initiator_iqn:
        _node_identity(args, name)  # given by a flag, the whole identity is configuration too
    return name


def _node_identity(args: argparse.Namespace, name: str) -> NodeIdentity:
    """Raises FailedPrecondition while the host has no usable initiator name."""
    iqn = read_initiator_name(args.initiator_name_file, args.initiator_iqn)
    node_id = NodeId(name, iqn)
    if len(str(node_id).encode()) > NODE_ID_MAX_BYTES:
        raise FailedPrecondition(f"node_id {str(node_id)[:64]!r}... is {len(str(node_id).encode())} bytes; CSI allows "
                            f"{NODE_ID_MAX_BYTES}: shorten the node name or the initiator IQN")
    return NodeIdentity(node_id, args.zone, args.max_volumes)


def _node_volumes(args: argparse.Namespace, runner: SubprocessRunner, identity: NodeIdentity, *,
                  beside_the_plugin: bool = False) -> NodeVolumes:
    """beside_the_plugin: for csi-iscsi doctor, which runs next to a serving plugin: the state store
    leaves temp files alone (they may be the plugin's writes in flight)."""
    settings = SessionSettings(login_timeout=args.login_timeout, login_retries=args.login_retries,
                               replacement_timeout=args.replacement_timeout,
                               noop_out_interval=args.noop_interval, noop_out_timeout=args.noop_timeout,
                               initiator_name=identity.node_id.initiator_iqn)
    login_bound = float(args.login_timeout * (args.login_retries + 1) + 10)
    timeouts = AttachTimeouts(login=login_bound, device=args.device_timeout, multipath_map=args.device_timeout,
                              detach=args.detach_timeout)
    mountinfo = Path(f"/proc/{args.host_pid}/mountinfo") if args.host_pid else Path("/proc/self/mountinfo")
    iscsiadm, scsi = Iscsiadm(runner), Scsi()
    # maps: even with --multipath=off a multipathd on the node may build a map over the one path;
    # detach flushes a map named by the volume's WWID whatever the mode, so none is left orphaned.
    maps = Multipath(runner)
    multipath = None if args.multipath == "off" else maps
    return NodeVolumes(
        runner, iscsiadm, scsi, multipath,
        attacher=Attacher(iscsiadm, scsi, multipath, settings, timeouts, maps=maps),
        single_path_attacher=Attacher(iscsiadm, scsi, None, settings, timeouts, maps=maps),
        fs=Filesystems(runner, MountTable(mountinfo), probe_timeout=args.device_timeout),
        states=StageStateStore(args.state_dir / "node" / "volumes", readonly=beside_the_plugin),
        multipath_mode=args.multipath, maps=maps)


def build_services(args: argparse.Namespace) -> Services:
    runner = SubprocessRunner(host_pid=args.host_pid)
    controller: ControllerServicer | None = None
    node: NodeServicer | None = None
    checks: list[Callable[[], tuple[bool, str]]] = []
    owned: list[StateDirLock] = []
    background: list[Healer | DoctorLoop] = []
    if args.mode in ("controller", "all"):
        bad = [p for p in args.portal if not is_portal(p)]
        if bad:
            raise CsiIscsiError(f"--portal values {bad} are not ip:port")
        if not args.portal:
            raise CsiIscsiError("--portal is required (one per path; two or more give multipath)")
        if not is_target_iqn_prefix(args.target_iqn_prefix):
            raise CsiIscsiError(f"--target-iqn-prefix {args.target_iqn_prefix!r} must be iqn.yyyy-mm.reversed.domain "
                                "(lowercase, no colon): the target IQN <prefix>:<volume id> must be a valid IQN")
        specs = args.pool or ["name=default,type=fileio,path=/var/lib/csi-iscsi/pool"]
        pools: dict[str, Pool] = {}
        for spec in specs:
            pool = parse_pool_spec(spec, runner)
            if pool.name in pools:
                raise CsiIscsiError(f"pool {pool.name} is configured twice")
            pools[pool.name] = pool
        owned.append(_own(args.state_dir / "controller", "controller"))
        # The saved config's writer, whichever state directory it serves: csi-iscsi doctor --fix on
        # the target node needs this lock too, so no copy of a state directory lets it run beside us.
        try:
            owned.append(_own(args.saveconfig.parent, "controller", args.saveconfig.name + ".lock"))
        except OSError as exc:
            raise CsiIscsiError(f"cannot lock the saved LIO config's {args.saveconfig}.lock ({exc}): the controller "
                                "rewrites that file and needs its directory writable") from exc
        try:
            record_controller(args.state_dir / "controller", specs, args.target_iqn_prefix, args.saveconfig)
        except OSError as exc:
            # Best effort, and never stale: doctor --fix refuses without a record of where we serve.
            log.warning("recording the controller's settings for csi-iscsi doctor: %s", exc)
            forget_controller(args.state_dir / "controller")
        target = LioTargetService(pools, args.portal, args.state_dir / "controller", SavedConfig(args.saveconfig),
                                  args.target_iqn_prefix)
        target.reconcile()
        if args.doctor_interval > 0:
            from csi_iscsi.lio.objects import LioView

            target_doctor = TargetDoctor(args.state_dir / "controller", LioView(), args.saveconfig, pools,
                                         prefix=args.target_iqn_prefix)
            background.append(DoctorLoop("target", TARGET_KINDS, partial(_own_findings, target_doctor),
                                         args.doctor_interval))
        if args.metrics_address:
            REGISTRY.register(PoolCollector(target))
            REGISTRY.register(TargetCounterCollector(target.target_counters))
        checks.append(target.ready)
        controller = ControllerServicer(target, tuple(args.serve_zone) or (DEFAULT_ZONE,))
    if args.mode in ("node", "all"):
        name = _node_name(args)
        owned.append(_own(args.state_dir / "node", "node"))

        def make_node() -> tuple[NodeIdentity, NodeVolumes]:
            identity = _node_identity(args, name)
            record_identity(args.state_dir / "node", identity.node_id.initiator_iqn)
            return identity, _node_volumes(args, runner, identity)
        deferred = DeferredNode(make_node)
        if args.heal_interval < 0 or args.heal_workers < 1:
            raise CsiIscsiError("--heal-interval must be >= 0 (0: off) and --heal-workers >= 1")
        locks = VolumeLocks(args.state_dir / "node" / "locks")  # shared with csi-iscsi doctor
        node = NodeServicer(deferred, locks=locks)
        if args.heal_interval > 0:
            background.append(Healer(lambda: deferred.get()[1], locks, args.heal_interval, workers=args.heal_workers))
        if args.doctor_interval > 0:
            background.append(DoctorLoop("node", NODE_KINDS, partial(_node_findings, args, runner, deferred),
                                         args.doctor_interval))
        if args.metrics_address:
            REGISTRY.register(NodePathCollector(lambda: deferred.get()[1].path_health()))
            REGISTRY.register(NodeSessionCollector(lambda: deferred.get()[1].session_states()))
        checks.append(deferred.ready)
        checks.append(lambda: node_ready(runner, multipath_mode=args.multipath))

    def readiness() -> tuple[bool, str]:
        for check in checks:
            ok, why = check()
            if not ok:
                return ok, why
        return True, "ready"

    return Services(identity=IdentityServicer(readiness), controller=controller, node=node, owned=owned,
                    background=background)


def _own_findings(target_doctor: TargetDoctor) -> list[Finding]:
    """The target side's dry run for csi_iscsi_doctor_findings, without what another controller on
    this LIO (or a person) owns: those stay for good, and an alert on them would never clear."""
    return [f for f in target_doctor.find() if NOT_OURS not in f.why]


def _node_findings(args: argparse.Namespace, runner: SubprocessRunner, deferred: DeferredNode) -> list[Finding]:
    """The node side's doctor dry run, for csi_iscsi_doctor_findings."""
    try:
        initiator = deferred.get()[0].node_id.initiator_iqn
    except CsiIscsiError as exc:  # not ready (readiness says why): nothing to count yet
        raise NotYet(str(exc)) from exc
    mountinfo = Path(f"/proc/{args.host_pid}/mountinfo") if args.host_pid else Path("/proc/self/mountinfo")
    return NodeDoctor(args.state_dir, runner, initiator=initiator,
                      iface=SessionSettings(initiator_name=initiator).iface, mountinfo=mountinfo).find()


def record_identity(node_dir: Path, initiator_iqn: str) -> None:
    """For csi-iscsi doctor: whose sessions and records are this node's, whatever its flags say.
    Best effort: a full state filesystem must not keep the plugin from serving unpublishes."""
    if doctor.read_recorded_identity(node_dir) == initiator_iqn:
        return
    try:
        write_json_atomic(node_dir / doctor.IDENTITY_FILE, {"initiator_iqn": initiator_iqn})
    except OSError as exc:
        log.warning("recording the initiator name for csi-iscsi doctor in %s: %s", node_dir, exc)


def _own(directory: Path, who: str, name: str = ".lock") -> StateDirLock:
    """Before any state is read: one process per plugin and state directory (a replacement pod waits)."""
    lock = StateDirLock(directory, who, name)
    lock.acquire()
    return lock


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.mode == "status":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return status.run(args)
    if args.mode == "doctor":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return doctor.run(args, lambda identity, runner: _node_volumes(args, runner, identity, beside_the_plugin=True),
                          lambda: _node_identity(args, _node_name(args)))
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        services = build_services(args)
        server = CsiServer(services, args.endpoint, workers=args.workers)
    except CsiIscsiError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if args.metrics_address:
        declare_all()
        host, port = args.metrics_address.rsplit(":", 1)
        start_http_server(int(port), addr=host or "0.0.0.0")
    if args.health_address:
        identity = services.identity
        assert isinstance(identity, IdentityServicer)
        HealthServer(args.health_address, lambda: grpc_answers(args.endpoint), identity.readiness).start()
    log.info("csi-iscsi %s starting in %s mode", __version__, args.mode)
    for loop in services.background:
        loop.start()
    try:
        server.serve_until_signal(args.grace_period)
    finally:
        for loop in services.background:
            loop.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
