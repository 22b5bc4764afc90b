"""The boundary of the controller's domain: the values the Controller servicer exchanges with the
target side, and the interface it calls. Today LioTargetService implements it in process; later a
remote agent on each storage node can take its place unnoticed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId

SIZE_ALIGN = 4 * 1024 * 1024  # LVM's default extent; fileio sizes use it too so both pools agree

CREATING, READY, DELETING = "creating", "ready", "deleting"


def align(size: int) -> int:
    return -(-size // SIZE_ALIGN) * SIZE_ALIGN


@dataclass(frozen=True)
class Grant:
    readonly: bool = False


@dataclass(frozen=True)
class VolumeRecord:
    """One volume as the controller knows it: a value. A change is a new record (dataclasses.replace,
    with_grant, without_grants), written to disk before it takes the old one's place in memory."""

    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    access_type: str  # "mount" or "block"
    access_modes: tuple[str, ...]
    parameters: Mapping[str, str]
    authentication: str = "none"
    state: str = CREATING
    grants: Mapping[str, Grant] = field(default_factory=dict)  # node_id -> grant
    content_source: str = ""  # "", "snapshot:<snapshot id>" or "volume:<volume id>"

    def __post_init__(self) -> None:
        # Read-only views over private copies: nobody can change a record a caller holds.
        object.__setattr__(self, "access_modes", tuple(self.access_modes))
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        object.__setattr__(self, "grants", MappingProxyType(dict(self.grants)))

    def with_grant(self, node_id: str, grant: Grant) -> VolumeRecord:
        return replace(self, grants={**self.grants, node_id: grant})

    def without_grants(self, node_ids: Iterable[str]) -> VolumeRecord:
        drop = set(node_ids)
        return replace(self, grants={k: v for k, v in self.grants.items() if k not in drop})

    def to_json(self) -> dict[str, Any]:
        return {
            "volume_id": self.volume_id, "name": self.name, "pool": self.pool,
            "capacity_bytes": self.capacity_bytes, "access_type": self.access_type,
            "access_modes": list(self.access_modes), "parameters": dict(self.parameters),
            "authentication": self.authentication, "state": self.state,
            "grants": {k: {"readonly": g.readonly} for k, g in self.grants.items()},
            # Only when set, with the format that brought it: the record of a volume made empty stays
            # readable by releases before content sources; one made from a source says why it is not.
            **({"content_source": self.content_source, "format": 2} if self.content_source else {}),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> VolumeRecord:
        """The record in a file; a field of the wrong type is an error here, not in a later call."""
        value = dict(value)
        if value.pop("format", 1) not in (1, 2):
            raise ValueError("it was written by a newer release of csi-iscsi (format > 2); roll forward")
        raw_grants = value.pop("grants", {})
        if not isinstance(raw_grants, dict):
            raise TypeError("grants is not an object")
        grants = {k: Grant(**v) for k, v in raw_grants.items()}
        record = cls(**value, grants=grants)
        for name, kind in (("volume_id", str), ("name", str), ("pool", str), ("capacity_bytes", int),
                           ("access_type", str), ("authentication", str), ("state", str),
                           ("content_source", str)):
            if not isinstance(getattr(record, name), kind) or isinstance(getattr(record, name), bool):
                raise TypeError(f"{name} is not a {kind.__name__}")
        if not all(isinstance(m, str) for m in record.access_modes) or \
                not all(isinstance(k, str) and isinstance(v, str) for k, v in record.parameters.items()) or \
                not all(isinstance(g.readonly, bool) for g in record.grants.values()):
            raise TypeError("access_modes, parameters or grants hold values of the wrong type")
        return record


@dataclass(frozen=True)
class VolumeSpec:
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    access_type: str
    access_modes: tuple[str, ...]
    parameters: Mapping[str, str]
    authentication: str
    content_source: str = ""


def content_source(kind: str, source_id: str) -> str:
    return f"{kind}:{source_id}"


def parse_content_source(value: str) -> tuple[str, str]:
    """("snapshot" | "volume", id), or ("", "") for a volume made empty."""
    kind, _, source_id = value.partition(":")
    return (kind, source_id) if source_id else ("", "")


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot as the controller knows it: a value, like VolumeRecord. Its bytes are the
    pool's (a thin snapshot LV, or a copy of the volume's file); it has no LIO object."""

    snapshot_id: str
    name: str
    source_volume_id: str
    pool: str
    size_bytes: int
    created_ns: int
    state: str = CREATING

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "snapshot_id": self.snapshot_id, "name": self.name,
                "source_volume_id": self.source_volume_id, "pool": self.pool, "size_bytes": self.size_bytes,
                "created_ns": self.created_ns, "state": self.state}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SnapshotRecord:
        value = dict(value)
        if value.pop("format", 1) != 1:
            raise ValueError("it was written by a newer release of csi-iscsi; roll forward")
        record = cls(**value)
        for name, kind in (("snapshot_id", str), ("name", str), ("source_volume_id", str), ("pool", str),
                           ("size_bytes", int), ("created_ns", int), ("state", str)):
            if not isinstance(getattr(record, name), kind) or isinstance(getattr(record, name), bool):
                raise TypeError(f"{name} is not a {kind.__name__}")
        return record


@dataclass(frozen=True)
class PoolInfo:
    name: str
    kind: str
    online_expansion: bool


class TargetBackend(Protocol):
    portals: list[str]

    def pools(self) -> dict[str, PoolInfo]: ...
    def default_pool(self) -> str: ...
    def target_iqn(self, volume_id: str) -> str: ...
    def get(self, volume_id: str) -> VolumeRecord | None: ...
    def create(self, spec: VolumeSpec) -> VolumeRecord: ...
    def delete(self, volume_id: str) -> None: ...
    def publish(self, volume_id: str, node: NodeId, readonly: bool, chap: Chap | None) -> VolumeRecord: ...
    def unpublish(self, volume_id: str, node: NodeId | None) -> None: ...
    def expand(self, volume_id: str, capacity_bytes: int) -> VolumeRecord: ...
    def page(self, start_after: str, limit: int) -> tuple[list[VolumeRecord], str]: ...
    def present(self, records: Sequence[VolumeRecord]) -> dict[str, bool | str]: ...
    def faults(self, record: VolumeRecord, listed: bool | str | None = None) -> list[str]: ...
    def available_bytes(self, pool: str) -> int: ...
    def ready(self) -> tuple[bool, str]: ...
    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...
    def create_snapshot(self, snapshot_id: str, name: str, source_volume_id: str) -> SnapshotRecord: ...
    def delete_snapshot(self, snapshot_id: str) -> None: ...
    def snapshot_page(self, start_after: str, limit: int, source_volume_id: str = "") -> \
        tuple[list[SnapshotRecord], str]: ...
