from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT.parent / "shared" / "tools" / "check_proto.py"


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_proto
    finally:
        sys.path.pop(0)
    gen_proto.generate(tmp_path)
    for name in ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py"):
        fresh = (tmp_path / "csi_iscsi" / "csi" / name).read_text()
        committed = (ROOT / "csi_iscsi" / "csi" / name).read_text()
        assert fresh == committed, f"csi_iscsi/csi/{name} is stale: run python tools/gen_proto.py"


@pytest.mark.skipif(not CHECKER.exists(), reason=f"{CHECKER} not present beside the repo")
def test_proto_is_wire_compatible_with_the_spec() -> None:
    result = subprocess.run([sys.executable, str(CHECKER), str(ROOT / "proto")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPATIBLE: 0 errors" in result.stdout
