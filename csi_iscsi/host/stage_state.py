"""Per-volume stage state on the host (not in the container), so a restarted node plugin can
still unstage: written atomically, no secrets in it. Unstage also works with the state gone,
because the target IQN's suffix and the WWID are both derived from the volume id."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from csi_iscsi.base.atomic import remove_durably, remove_stale_temps, write_json_atomic
from csi_iscsi.contract import is_volume_id

# attaching: a stage is in progress (or died); staged: done; unstaging: the staging mount is gone and
# the detach is under way, so nothing may be published from this volume any more.
ATTACHING, STAGED, UNSTAGING = "attaching", "staged", "unstaging"


@dataclass(frozen=True)
class StageState:
    volume_id: str
    target_iqn: str
    portals: list[str]
    lun: int
    wwid: str
    staging_path: str
    access_type: str  # mount | block
    fs_type: str
    device: str = ""
    phase: str = ATTACHING
    mkfs_started: bool = False  # a mkfs ran on the volume and its end was not seen
    # "chap" or "none": whether self-heal may make a lost node record again without the secret
    # (kept in memory only). "": a state written before this field.
    authentication: str = ""


class StageStateStore:
    def __init__(self, directory: Path, *, readonly: bool = False) -> None:
        """readonly: for a reader beside the running plugin (csi-iscsi status): it creates nothing
        and leaves temp files alone, which may be the plugin's writes in flight."""
        self._dir = directory
        if not readonly:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            remove_stale_temps(self._dir)

    def _path(self, volume_id: str) -> Path:
        if not is_volume_id(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        return self._dir / f"{volume_id}.json"

    def get(self, volume_id: str) -> StageState | None:
        try:
            value = json.loads(self._path(volume_id).read_text())
        except FileNotFoundError:
            return None
        known = {f.name for f in fields(StageState)}
        return StageState(**{k: v for k, v in value.items() if k in known})

    def all(self) -> list[StageState]:
        """Every readable state, by volume id; one that cannot be parsed is left out (get says why)."""
        states = []
        for path in sorted(self._dir.glob("*.json")):
            if not is_volume_id(path.stem):
                continue
            try:
                state = self.get(path.stem)
            except Exception:  # torn, not JSON, not an object: left out, the others still listed
                continue
            if state is not None:
                states.append(state)
        return states

    def put(self, state: StageState) -> None:
        write_json_atomic(self._path(state.volume_id), asdict(state))

    def remove(self, volume_id: str) -> None:
        remove_durably(self._path(volume_id))
