"""The `csi-iscsi` command. `status` is sent to its own module before the CLI is imported: an
operator's look at a host should not pay for importing the gRPC servers and servicers."""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["status"]:
        from csi_iscsi.ops.status import main as status

        return status(sys.argv[2:])
    from csi_iscsi.cli import main as serve

    return serve()


if __name__ == "__main__":
    sys.exit(main())
