from __future__ import annotations

import os
from pathlib import Path

import pytest

from csi_iscsi.base.atomic import write_atomic


def test_a_write_that_fails_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The saved LIO config holds CHAP secrets: a half-written copy must not stay behind."""
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "saveconfig.json", b'{"secret": "x"}')
    assert list(tmp_path.iterdir()) == []
