"""The boundary of the controller's domain: the values the Controller servicer exchanges with the
target side, and the interface it calls. Today LioTargetService implements it in process; later a
remote agent on each storage node can take its place unnoticed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId

SIZE_ALIGN = 4 * 1024 * 1024  # LVM's default extent; fileio sizes use it too so both pools agree

CREATING, READY, DELETING = "creating", "ready", "deleting"


def align(size: int) -> int:
    return -(-size // SIZE_ALIGN) * SIZE_ALIGN


@dataclass
class Grant:
    readonly: bool = False


@dataclass
class VolumeRecord:
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    access_type: str  # "mount" or "block"
    access_modes: list[str]
    parameters: dict[str, str]
    authentication: str = "none"
    state: str = CREATING
    grants: dict[str, Grant] = field(default_factory=dict)  # node_id -> grant

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> VolumeRecord:
        grants = {k: Grant(**v) for k, v in value.pop("grants", {}).items()}
        return cls(**value, grants=grants)


@dataclass(frozen=True)
class VolumeSpec:
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    access_type: str
    access_modes: tuple[str, ...]
    parameters: dict[str, str]
    authentication: str


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
    def unpublish(self, volume_id: str, node: NodeId) -> None: ...
    def expand(self, volume_id: str, capacity_bytes: int) -> VolumeRecord: ...
    def page(self, start_after: str, limit: int) -> tuple[list[VolumeRecord], str]: ...
    def available_bytes(self, pool: str) -> int: ...
    def ready(self) -> tuple[bool, str]: ...
