"""What csi-iscsi doctor reports, on a worker and on the target node alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str  # what it is: the session, record, map, file, LIO object or saved entry
    volume_id: str  # whose it is (a volume or snapshot id); "" when that cannot be told
    why: str  # why it is an orphan
    fix: str  # what --fix does to it; "" when doctor only reports it
    result: str = ""  # after --fix: "cleared", or why it was left
