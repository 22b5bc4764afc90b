"""What the node plugin's Probe reports: whether it can attach volumes right now (not merely that it runs)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.runner import Runner

# iscsiadm reaches iscsid on this abstract unix socket (open-iscsi's ISCSIADM_NAMESPACE; systemd's
# iscsid.socket listens on it too). Abstract sockets belong to a network namespace: the plugin runs
# in the host's (hostNetwork), the one iscsiadm uses.
ISCSID_ADDRESS = "\0ISCSIADM_ABSTRACT_NAMESPACE"


def iscsid_listening(address: str = ISCSID_ADDRESS) -> bool:
    """True when something accepts connections where iscsiadm looks for iscsid. Asking the socket,
    not the process table, also works where iscsid runs in another PID namespace."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def node_ready(runner: Runner, iscsid_check: Callable[[], bool] = iscsid_listening) -> tuple[bool, str]:
    try:
        runner.run(["iscsiadm", "--version"], timeout=10)
    except CsiIscsiError as exc:
        return False, f"iscsiadm not usable: {exc}"
    if not iscsid_check():
        return False, ("iscsid is not listening on @ISCSIADM_ABSTRACT_NAMESPACE in this network namespace: "
                       "start it (systemctl enable --now iscsid)")
    return True, "ready"
