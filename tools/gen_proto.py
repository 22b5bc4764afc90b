"""Generate the Python stubs of proto/csi.proto into csi_iscsi/csi/.

The stubs are committed so the package installs without grpcio-tools; tests/unit/test_proto.py
regenerates them into a temporary directory and fails when the committed ones are stale.
Run: python tools/gen_proto.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The virtual include path makes protoc see the file as csi_iscsi/csi/csi.proto, so the
# generated modules import each other as csi_iscsi.csi.csi_pb2 instead of a top-level csi_pb2.
VIRTUAL_DIR = "csi_iscsi/csi"


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # build-time only dependency

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{VIRTUAL_DIR}={ROOT / 'proto'}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"{VIRTUAL_DIR}/csi.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/csi.proto")


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
