"""What the target node holds of each volume, read from the controller's records and live LIO
(never from the controller's memory): its target IQN, LUN and WWID, every ACL with the node it was
granted to and whether CHAP is on (never a secret), whether the pool holds its data, and what is
wrong with its export. Reads only; safe beside a running controller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from csi_iscsi import contract
from csi_iscsi.contract import NodeId
from csi_iscsi.lio.api import READY, VolumeRecord
from csi_iscsi.lio.objects import LUN_INDEX
from csi_iscsi.lio.pools import Pool
from csi_iscsi.lio.records import RecordStore


class LioReader(Protocol):
    def acls(self, iqn: str) -> list[tuple[str, bool, bool, bool]]: ...
    def export_faults(self, name: str, iqn: str, portals: list[str], chap: bool,
                      grants: dict[str, bool]) -> list[str]: ...


@dataclass(frozen=True)
class AclView:
    initiator: str
    node: str  # the node name the grant was recorded for; "" for an ACL no record names
    readonly: bool
    chap: bool
    mutual_chap: bool


@dataclass(frozen=True)
class TargetVolumeView:
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    state: str
    authentication: str
    target_iqn: str
    lun: int
    wwid: str
    content_source: str
    acls: list[AclView]
    data: str  # present, missing, or why it was not checked
    abnormal: bool
    condition: str


@dataclass
class TargetStatus:
    volumes: list[TargetVolumeView]
    notes: list[str] = field(default_factory=list)


def read_target_status(state_dir: Path, lio: LioReader, pools: dict[str, Pool], portals: list[str], *,
                       prefix: str = contract.DEFAULT_TARGET_IQN_PREFIX,
                       volume_ids: list[str] | None = None) -> TargetStatus:
    """pools and portals as the controller is configured (its --pool and --portal): without them,
    a volume's data and the portals are not checked, and the output says so."""
    store = RecordStore(state_dir / "controller", readonly=True)
    records = store.all()
    if volume_ids:
        records = [r for r in records if r.volume_id in volume_ids]
    notes = [f"volume {v}: its record is unreadable; nothing else is read for it" for v in sorted(store.unreadable)
             if not volume_ids or v in volume_ids]
    notes += [f"volume {v}: no record on this controller" for v in volume_ids or ()
              if v not in {r.volume_id for r in records} and v not in store.unreadable]
    if not portals:
        notes.append("no --portal given: the targets' portals are not checked")
    present: dict[str, set[str]] = {}
    for name in {r.pool for r in records}:
        pool = pools.get(name)
        if pool is None:
            continue
        try:
            present[name] = pool.present([r.volume_id for r in records if r.pool == name])
        except Exception as exc:
            notes.append(f"pool {name} could not be listed ({type(exc).__name__}: {exc})")
    return TargetStatus([_volume(r, lio, pools, present, portals, prefix) for r in records], notes)


def _volume(record: VolumeRecord, lio: LioReader, pools: dict[str, Pool], present: dict[str, set[str]],
            portals: list[str], prefix: str) -> TargetVolumeView:
    iqn = contract.target_iqn(record.volume_id, prefix)
    granted = {n.initiator_iqn.lower(): (n, g.readonly) for k, g in record.grants.items() if (n := NodeId.parse(k))}
    acls = [AclView(initiator, granted[initiator][0].node_name if initiator in granted else "", readonly, chap, mutual)
            for initiator, chap, mutual, readonly in lio.acls(iqn)]
    if record.state != READY:
        data = f"not checked ({record.state})"  # a copy in progress, or a delete: the file may be elsewhere
    elif record.pool not in pools:
        data = f"not checked (pool {record.pool} not given)"
    elif record.pool not in present:
        data = "not checked (the pool could not be listed)"
    else:
        data = "present" if record.volume_id in present[record.pool] else "missing"
    faults = [] if data != "missing" else [f"its data is missing from pool {record.pool}"]
    if record.state == READY:
        faults += lio.export_faults(record.volume_id, iqn, portals, record.authentication != "none",
                                    {n.initiator_iqn: ro for n, ro in granted.values()})
    faults += [f"LIO has an ACL for {a.initiator} that no publish recorded" for a in acls if not a.node]
    condition = "; ".join(faults) if faults else ("healthy" if record.state == READY else
                                                  f"{record.state}: a retried call finishes it")
    return TargetVolumeView(record.volume_id, record.name, record.pool, record.capacity_bytes, record.state,
                            record.authentication, iqn, LUN_INDEX, contract.wwid(record.volume_id),
                            record.content_source, acls, data, bool(faults), condition)
