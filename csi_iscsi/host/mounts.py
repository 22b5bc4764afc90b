"""What is mounted where, read from mountinfo (exact, and cheaper than running findmnt)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


@dataclass(frozen=True)
class Mount:
    target: str
    source: str
    fstype: str
    root: str
    options: tuple[str, ...]
    major_minor: str

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        mounts.append(Mount(
            target=_unescape(fields[4]), source=_unescape(tail[1]), fstype=tail[0],
            root=_unescape(fields[3]), options=tuple(fields[5].split(",")), major_minor=fields[2],
        ))
    return mounts


class MountTable:
    def __init__(self, mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
        self._path = mountinfo

    def all(self) -> list[Mount]:
        return parse_mountinfo(self._path.read_text())

    def at(self, target: str) -> list[Mount]:
        """Every mount stacked on target, bottom first."""
        return [m for m in self.all() if m.target == target]
