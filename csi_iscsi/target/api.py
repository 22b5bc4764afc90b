"""The small interface the controller servicer calls. Today LioTargetService implements it in
process; later a remote agent on each storage node can take its place unnoticed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId
from csi_iscsi.target.records import VolumeRecord


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
