"""The boundary of the node's domain: what the Node servicer hands the host side and gets back,
and the interface it calls (NodeVolumes implements it), the mirror of csi_iscsi.lio.api."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from csi_iscsi.chap import Chap


@dataclass(frozen=True)
class TargetInfo:
    iqn: str
    portals: list[str]
    lun: int
    wwid: str


@dataclass(frozen=True)
class VolumeStats:
    total_bytes: int
    used_bytes: int
    available_bytes: int
    total_inodes: int
    used_inodes: int
    available_inodes: int
    abnormal: bool
    message: str


@dataclass(frozen=True)
class PathHealth:
    volume_id: str
    portals: int  # the paths the volume was staged with
    active: int
    down: int
    abnormal: bool  # what NodeGetVolumeStats would report


@dataclass(frozen=True)
class Repair:
    """One step a self-heal pass took, or could not take, on a volume's attachment."""

    action: str  # record | login | rescan | map
    where: str  # the portal, or the paths
    ok: bool
    detail: str


class NodeBackend(Protocol):
    def stage(self, volume_id: str, target: TargetInfo, staging_path: str, access_type: str, fs_type: str,
              mount_flags: list[str], chap: Chap | None) -> None: ...
    def unstage(self, volume_id: str, staging_path: str) -> None: ...
    def publish(self, volume_id: str, staging_path: str, target_path: str, access_type: str,
                readonly: bool) -> None: ...
    def unpublish(self, target_path: str) -> None: ...
    def expand(self, volume_id: str, volume_path: str, required_bytes: int = 0) -> int: ...
    def stats(self, volume_id: str, volume_path: str) -> VolumeStats: ...
    def path_health(self) -> list[PathHealth]: ...
    def session_states(self) -> list[str]: ...
    def heal_gaps_all(self) -> dict[str, list[str]]: ...
    def heal_gaps(self, volume_id: str) -> list[str]: ...
    def heal(self, volume_id: str) -> tuple[list[str], list[Repair]]: ...
