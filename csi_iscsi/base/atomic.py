"""Crash-safe small files: a reader sees the old content or the new, never a torn write."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """temp + fsync + rename + fsync(dir), created with `mode` (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # A half-written temp file may hold secrets (the saved LIO config does): never leave one.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Makes a rename or unlink in the directory durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, value: Any, mode: int = 0o600) -> None:
    write_atomic(path, (json.dumps(value, sort_keys=True, indent=1) + "\n").encode(), mode)


def remove_durably(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def remove_stale_temps(directory: Path, name: str = "*") -> None:
    """Temp files a killed writer left (write_atomic names them .<name>.<pid>.tmp). Only the one
    process that owns the state directory writes these files, so at its start any such file is
    stale; some hold secrets (the saved LIO config)."""
    for stale in directory.glob(f".{name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
