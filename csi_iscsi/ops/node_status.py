"""What a worker holds of each staged volume, read from the host (never from the plugin's memory):
its stage state, every portal's session and SCSI device, multipathd's view of each path and of
the map, and the mounts. One listing serves all volumes: sysfs, one `multipathd show paths`, one
`multipathd show maps`, one read of mountinfo. Reads only; safe beside a running plugin."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.runner import Runner
from csi_iscsi.contract import canonical_portal
from csi_iscsi.host.mounts import Mount, MountTable
from csi_iscsi.host.multipath import MapState, Multipath, PathState, paths_condition
from csi_iscsi.host.scsi import IscsiSession, Scsi
from csi_iscsi.host.stage_state import STAGED, StageState, StageStateStore


@dataclass(frozen=True)
class PathView:
    portal: str
    session: int | None  # the kernel's session id; None: no session to this portal
    session_state: str  # LOGGED_IN, FAILED (recovering), FREE, or "none"
    device: str  # sdX, or "" when the session has no device for the LUN
    device_state: str  # the SCSI device's: running, blocked, transport-offline, offline...
    dm_state: str  # multipathd's: active, failed, undef; "" when it does not know the path
    checker: str  # multipathd's checker: ready, faulty, ghost, i/o pending...
    io_errors: int | None  # the SCSI device's ioerr_cnt since it appeared


@dataclass(frozen=True)
class MapView:
    name: str
    dm: str
    paths: int
    dm_state: str
    queueing: str  # multipathd's: "N chk" (paths up, N checks of queueing allowed), "N sec" (no usable
    # path: queueing, N seconds left), off (failing I/O), on (queueing forever), "-"


@dataclass(frozen=True)
class NodeVolumeView:
    volume_id: str
    phase: str
    target_iqn: str
    lun: int
    wwid: str
    access_type: str
    fs_type: str
    device: str
    paths: list[PathView]
    map: MapView | None
    staging_path: str
    staging_mounted: bool
    pod_mounts: list[str]
    abnormal: bool
    condition: str


@dataclass
class NodeStatus:
    volumes: list[NodeVolumeView]
    notes: list[str] = field(default_factory=list)  # what could not be read, and so is not shown


def _counter(sysfs: Path, device: str, name: str) -> int | None:
    try:
        return int((sysfs / "block" / device / "device" / name).read_text().strip(), 0)
    except (OSError, ValueError):
        return None


def read_node_status(state_dir: Path, runner: Runner, *, volume_ids: list[str] | None = None,
                     initiator: str = "", sysfs: Path = Path("/sys"), dev: Path = Path("/dev"),
                     mountinfo: Path = Path("/proc/self/mountinfo")) -> NodeStatus:
    """initiator: this node's initiator name; sessions presenting another (a node sharing this
    kernel's iscsid) are not this node's."""
    states = StageStateStore(state_dir / "node" / "volumes", readonly=True).all()
    if volume_ids:
        states = [s for s in states if s.volume_id in volume_ids]
    notes = [f"volume {v}: no stage state on this node" for v in volume_ids or ()
             if v not in {s.volume_id for s in states}]
    scsi, multipath = Scsi(sysfs), Multipath(runner, dev=dev, sysfs=sysfs)
    mine = initiator.lower()
    sessions = [s for s in scsi.iscsi_sessions() if not mine or s.initiator in ("", mine)]
    paths: dict[str, list[PathState]] = {}
    maps: dict[str, MapState] = {}
    if any(_on_map(s, multipath) for s in states):  # never wakes multipathd for single-path volumes
        # Both questions at once: each is a process and a round trip to multipathd, slow when the
        # node is busy, and they do not depend on each other.
        answers: list[dict[str, MapState] | Exception] = []

        def ask_maps() -> None:
            try:
                answers.append(multipath.map_states())
            except Exception as exc:  # told below, in the notes
                answers.append(exc)

        asking = threading.Thread(target=ask_maps, daemon=True)
        asking.start()
        try:
            paths = multipath.all_path_states(timeout=5)
        except CsiIscsiError as exc:  # failed, timed out, or not installed
            notes.append(f"multipathd did not answer ({exc}); path states are not shown")
        asking.join()
        answer = answers[0] if answers else RuntimeError("no answer")
        if isinstance(answer, Exception):
            notes.append(f"multipathd did not answer about the maps ({answer}); map states are not shown")
        else:
            maps = answer
    mounts = MountTable(mountinfo).all()
    by_portal = {(s.target_iqn, canonical_portal(s.portal)): s for s in sessions}
    views = [_volume(state, by_portal, paths, maps, mounts, scsi, multipath, sysfs) for state in states]
    return NodeStatus(views, notes)


def _on_map(state: StageState, multipath: Multipath) -> bool:
    """Whether the volume was staged over a multipath map (what NodeVolumes decides by too)."""
    return state.device == str(multipath.map_path(state.wwid))


def _volume(state: StageState, sessions: dict[tuple[str, str], IscsiSession], every: dict[str, list[PathState]],
            maps: dict[str, MapState], mounts: list[Mount], scsi: Scsi, multipath: Multipath,
            sysfs: Path) -> NodeVolumeView:
    by_device = {p.device: p for p in every.get(state.wwid, [])}
    views = []
    for portal in state.portals:
        session = sessions.get((state.target_iqn, canonical_portal(portal)))
        if session is None:
            views.append(PathView(portal, None, "none", "", "", "", "", None))
            continue
        devices = scsi.devices(session.sid, state.lun)  # none when the session went away meanwhile
        if not devices:
            views.append(PathView(portal, session.sid, session.state, "", "", "", "", None))
            continue
        for device in devices:
            known = by_device.get(device.name)
            views.append(PathView(portal, session.sid, session.state, device.name, scsi.state(device.name),
                                  known.dm_state if known else "", known.checker if known else "",
                                  _counter(sysfs, device.name, "ioerr_cnt")))
    dm = multipath.dm_name(state.wwid)
    shown = maps.get(state.wwid)
    map_view = None
    if dm is not None or shown is not None:
        map_view = MapView(state.wwid, dm or (shown.dm if shown else ""), shown.paths if shown else 0,
                           shown.dm_state if shown else "", shown.queueing if shown else "")
    staging = [m for m in mounts if m.target == state.staging_path]
    if state.access_type == "block":
        base = "/" + os.path.basename(os.path.realpath(state.device)) if state.device else ""
        pods = sorted(m.target for m in mounts if base and m.root == base and m.target != state.staging_path)
    else:
        top = staging[-1] if staging else None
        pods = sorted(m.target for m in mounts if top is not None and m.target != state.staging_path
                      and m.major_minor == top.major_minor and m.root == top.root)
    abnormal, condition = _condition(state, views, every, map_view, multipath)
    return NodeVolumeView(state.volume_id, state.phase, state.target_iqn, state.lun, state.wwid, state.access_type,
                          state.fs_type, state.device, views, map_view, state.staging_path, bool(staging), pods,
                          abnormal, condition)


def _condition(state: StageState, views: list[PathView], every: dict[str, list[PathState]],
               map_view: MapView | None, multipath: Multipath) -> tuple[bool, str]:
    if state.phase != STAGED:
        return False, (f"not staged ({state.phase}): a stage or unstage in flight, or what a failed one "
                       "left for the next to find")
    if not state.device or not os.path.exists(state.device):
        return True, f"device {state.device or '(none recorded)'} is gone"
    if not _on_map(state, multipath):
        running = [v for v in views if v.device and v.device_state == "running"]
        return (False, "single path, device present") if running else \
            (True, "the volume's one path has no running device")
    if not every:
        return True, "multipathd cannot report the paths"
    abnormal, message = paths_condition(len(state.portals), every.get(state.wwid, []),
                                        multipath.slaves(state.wwid))
    if map_view is not None and map_view.queueing.endswith("sec"):
        return True, f"{message}; the map is queueing I/O with no usable path ({map_view.queueing} left)"
    return abnormal, message
