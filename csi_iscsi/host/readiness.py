"""What the node plugin's Probe reports: whether it can attach volumes right now (not merely that it runs)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.runner import Runner
from csi_iscsi.host import multipath_config

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


def multipath_ready(runner: Runner, mode: str) -> tuple[bool, str]:
    """Whether multipathd runs and its effective settings are safe for LIO LUNs (--multipath=required);
    with preferred, a node without multipathd attaches over one path, but unsafe settings still count."""
    if mode == "off":
        return True, "ready"
    config = why = ""
    try:
        shown = runner.run(["multipathd", "show", "config"], ok_codes=(0, 1), timeout=10)
        if shown.returncode == 0 and "defaults {" in shown.stdout:
            config = shown.stdout
        why = shown.stderr.strip() or shown.stdout.strip()[:200]
    except CsiIscsiError as exc:
        why = str(exc)
    if not config:
        if mode == "required":
            return False, (f"multipathd does not answer ({why}) and --multipath=required: start it "
                           "(systemctl enable --now multipathd) or run with --multipath=preferred")
        return True, "ready"
    problems = multipath_config.problems(config)
    if problems:
        return False, "multipath settings are unsafe for csi-iscsi volumes: " + "; ".join(problems)
    return True, "ready"


def node_ready(runner: Runner, iscsid_check: Callable[[], bool] = iscsid_listening,
               multipath_mode: str = "off") -> tuple[bool, str]:
    try:
        runner.run(["iscsiadm", "--version"], timeout=10)
    except CsiIscsiError as exc:
        return False, f"iscsiadm not usable: {exc}"
    if not iscsid_check():
        return False, ("iscsid is not listening on @ISCSIADM_ABSTRACT_NAMESPACE in this network namespace: "
                       "start it (systemctl enable --now iscsid)")
    return multipath_ready(runner, multipath_mode)
