"""The node's initiator IQN, from open-iscsi's initiatorname file (or an explicit override)."""

from __future__ import annotations

from pathlib import Path

from csi_iscsi.base.errors import FailedPrecondition
from csi_iscsi.contract import normalize_iqn

DEFAULT_FILE = Path("/etc/iscsi/initiatorname.iscsi")


def read_initiator_name(path: Path = DEFAULT_FILE, override: str = "") -> str:
    if override:
        iqn = override.strip()
        source = "--initiator-iqn"
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise FailedPrecondition(f"cannot read the initiator name from {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise FailedPrecondition(f"{path} is not text: {exc.reason} at byte {exc.start}") from exc
        names = [line.split("=", 1)[1].strip() for line in text.splitlines()
                 if line.strip().startswith("InitiatorName=")]
        if len(names) != 1:
            raise FailedPrecondition(f"{path} must hold exactly one InitiatorName= line, found {len(names)}")
        iqn = names[0]
        source = str(path)
    normal = normalize_iqn(iqn)
    if normal is None:
        raise FailedPrecondition(f"initiator name {iqn!r} from {source} is not a valid iqn./eui. name "
                                 "(letters, digits, '-', '.' and ':' only)")
    return normal
