"""open-iscsi's iscsiadm: node records, logins and logouts for one target at a time.

The driver never runs SendTargets discovery: it creates exactly the node records of the
volume's target (one per portal), so an initiator never gets records for targets it was not
granted, and node.startup=manual keeps a reboot from logging in behind the driver's back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from csi_iscsi.chap import Chap
from csi_iscsi.host.runner import CommandFailed, Runner

ISCSIADM = "iscsiadm"
# iscsiadm exit codes (open-iscsi's iscsi_err.h) the driver treats specially.
EXIT_DB_FAILURE = 6  # the record database was busy: retry
EXIT_SESSION_EXISTS = 15
EXIT_NO_OBJS_FOUND = 21  # no session / no record: fine on cleanup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionSettings:
    """Per-record initiator settings; every timeout is configurable, none hardcoded."""

    login_timeout: int = 15
    login_retries: int = 1
    replacement_timeout: int = 10
    noop_out_interval: int = 5
    noop_out_timeout: int = 5
    # The IQN the node reported (NodeId) and the ACL was made for. Written into each record, so the
    # login presents it whatever name the iscsid in use was started with: an initiator name file
    # changed without restarting iscsid, or one iscsid serving several nodes' containers (kind).
    initiator_name: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def node_settings(self) -> dict[str, str]:
        settings = {
            "node.startup": "manual",
            "node.session.scan": "manual",
            "node.conn[0].timeo.login_timeout": str(self.login_timeout),
            "node.session.initial_login_retry_max": str(self.login_retries),
            "node.session.timeo.replacement_timeout": str(self.replacement_timeout),
            "node.conn[0].timeo.noop_out_interval": str(self.noop_out_interval),
            "node.conn[0].timeo.noop_out_timeout": str(self.noop_out_timeout),
        }
        if self.initiator_name:
            settings["iface.initiatorname"] = self.initiator_name
        settings.update(self.extra)
        return settings


class Iscsiadm:
    def __init__(self, runner: Runner, *, db_retries: int = 5, db_retry_delay: float = 0.2) -> None:
        self._runner = runner
        self._db_retries = db_retries
        self._db_retry_delay = db_retry_delay

    def _run(self, args: list[str], *, ok_codes: tuple[int, ...] = (0,), secrets: tuple[str, ...] = (),
             timeout: float | None = None) -> int:
        for attempt in range(self._db_retries + 1):
            try:
                return self._runner.run([ISCSIADM, *args], ok_codes=ok_codes, secrets=secrets,
                                        timeout=timeout).returncode
            except CommandFailed as exc:
                if exc.returncode != EXIT_DB_FAILURE or attempt == self._db_retries:
                    raise
                time.sleep(self._db_retry_delay)
        raise AssertionError("unreachable")

    def _node(self, iqn: str, portal: str) -> list[str]:
        return ["-m", "node", "-T", iqn, "-p", portal]

    def create_node(self, iqn: str, portal: str, settings: SessionSettings, chap: Chap | None = None) -> None:
        """Create (or refresh) the record of one target portal with the given settings."""
        self._run([*self._node(iqn, portal), "-o", "new"])
        values = settings.node_settings()
        secrets: tuple[str, ...] = ()
        if chap is None:
            values["node.session.auth.authmethod"] = "None"
        else:
            # iscsiadm takes record values only as arguments (docs/contract.md says so).
            values["node.session.auth.authmethod"] = "CHAP"
            values["node.session.auth.username"] = chap.user
            values["node.session.auth.password"] = chap.password
            if chap.mutual_user:
                values["node.session.auth.username_in"] = chap.mutual_user
                values["node.session.auth.password_in"] = chap.mutual_password
            secrets = chap.secrets()
        pairs = [arg for name, value in values.items() for arg in ("-n", name, "-v", value)]
        try:
            # open-iscsi 2.1 applies every -n/-v pair of one update: one process instead of one per setting.
            self._run([*self._node(iqn, portal), "-o", "update", *pairs], secrets=secrets)
        except CommandFailed as exc:
            log.info("iscsiadm took only one setting per update (exit %d); setting them one by one", exc.returncode)
            for name, value in values.items():
                self._run([*self._node(iqn, portal), "-o", "update", "-n", name, "-v", value], secrets=secrets)

    def login(self, iqn: str, portal: str, timeout: float) -> None:
        self._run([*self._node(iqn, portal), "--login"], ok_codes=(0, EXIT_SESSION_EXISTS), timeout=timeout)

    def logout_target(self, iqn: str, timeout: float) -> None:
        """Log out of every session of one target (one volume's, since each volume has its own)."""
        self._run(["-m", "node", "-T", iqn, "--logout"], ok_codes=(0, EXIT_NO_OBJS_FOUND), timeout=timeout)

    def delete_target_records(self, iqn: str) -> None:
        self._run(["-m", "node", "-T", iqn, "-o", "delete"], ok_codes=(0, EXIT_NO_OBJS_FOUND))

    def record_targets(self) -> list[str]:
        """Every target that has a node record on this host."""
        result = self._runner.run([ISCSIADM, "-m", "node"], ok_codes=(0, EXIT_NO_OBJS_FOUND), timeout=30)
        return sorted({parts[1] for parts in map(str.split, result.stdout.splitlines()) if len(parts) == 2})
