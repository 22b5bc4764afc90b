"""open-iscsi's iscsiadm: node records, logins and logouts for one target at a time.

The driver never runs SendTargets discovery: it creates exactly the node records of the
volume's target (one per portal), so an initiator never gets records for targets it was not
granted, and node.startup=manual keeps a reboot from logging in behind the driver's back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from csi_iscsi.base.errors import CsiIscsiError
from csi_iscsi.base.runner import CommandFailed, Runner
from csi_iscsi.chap import Chap

ISCSIADM = "iscsiadm"
# iscsiadm exit codes (open-iscsi's iscsi_err.h) the driver treats specially.
EXIT_DB_FAILURE = 6  # the record database was busy: retry
EXIT_INVALID_ARGUMENT = 7  # also: deleting an iface that does not exist
# ISCSI_ERR_NOMEM, which iscsiadm 2.1.8 returns when asked for the records of an iface it cannot read.
EXIT_IFACE_UNREADABLE = 3
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
    # The IQN the node reported (NodeId) and the ACL was made for. The records are bound to an iface
    # that carries it, so the login presents it whatever name the iscsid in use was started with: an
    # initiator name file changed without restarting iscsid, or one iscsid serving several kind nodes.
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
        settings.update(self.extra)
        return settings

    @property
    def iface(self) -> str:
        """The iface record named after the initiator name ('' when the host's default applies)."""
        if not self.initiator_name:
            return ""
        return "csi-" + hashlib.sha256(self.initiator_name.encode()).hexdigest()[:16]


class Iscsiadm:
    def __init__(self, runner: Runner, *, db_retries: int = 5, db_retry_delay: float = 0.2) -> None:
        self._runner = runner
        self._db_retries = db_retries
        self._db_retry_delay = db_retry_delay
        self._ifaces_made: set[str] = set()
        self._iface_users: Counter[str] = Counter()
        self._iface_lock = threading.RLock()

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

    def _node(self, iqn: str, portal: str, iface: str = "") -> list[str]:
        return ["-m", "node", "-T", iqn, "-p", portal, *(["-I", iface] if iface else [])]

    def ensure_iface(self, settings: SessionSettings, *, recheck: bool = False) -> None:
        """The iface record that makes logins present settings.initiator_name (node records cannot
        carry iface.initiatorname themselves: iscsiadm refuses to update it in node mode).
        recheck: look again even if this process made it (a repair: someone may have deleted it)."""
        iface = settings.iface
        with self._iface_lock:
            if not iface or (iface in self._ifaces_made and not recheck):
                return
            # Listed rather than shown: showing a missing iface is a generic database error (exit 6).
            listing = self._runner.run([ISCSIADM, "-m", "iface"], ok_codes=(0, EXIT_NO_OBJS_FOUND), timeout=30)
            if iface not in {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}:
                self._run(["-m", "iface", "-I", iface, "-o", "new"])
            for name, value in (("iface.transport_name", "tcp"), ("iface.initiatorname", settings.initiator_name)):
                self._run(["-m", "iface", "-I", iface, "-o", "update", "-n", name, "-v", value])
            self._ifaces_made.add(iface)

    @contextlib.contextmanager
    def iface_in_use(self, settings: SessionSettings) -> Iterator[None]:
        """Holds the iface while an attach makes its records and logs in: forget_iface_if_unused
        must not delete it between the two."""
        iface = settings.iface
        with self._iface_lock:
            self._iface_users[iface] += 1
        try:
            yield
        finally:
            with self._iface_lock:
                self._iface_users[iface] -= 1

    def forget_iface_if_unused(self, settings: SessionSettings) -> None:
        """Delete the driver's iface record once no node record is bound to it. While it exists, a
        plain `iscsiadm -m discovery` by anyone on the node makes records for it too (discovery
        binds new records to every iface), and a login-all would log in with the driver's name."""
        iface = settings.iface
        if not iface:
            return
        with self._iface_lock:
            if self._iface_users[iface] > 0:
                return
            try:
                found = self._run(["-m", "node", "-I", iface], timeout=30,
                                  ok_codes=(0, EXIT_IFACE_UNREADABLE, EXIT_NO_OBJS_FOUND))
                if found == 0:
                    return  # records of another volume (or of someone's discovery) still use it
                # Forgotten before the delete: a delete that fails half-way must not leave the next
                # attach trusting an iface that is gone.
                self._ifaces_made.discard(iface)
                if found == EXIT_NO_OBJS_FOUND:
                    # Deleting an iface also deletes the records bound to it; there are none.
                    self._run(["-m", "iface", "-I", iface, "-o", "delete"], ok_codes=(0, EXIT_INVALID_ARGUMENT),
                              timeout=30)
            except CsiIscsiError as exc:  # the volume is detached; a leftover iface is only untidy
                log.warning("deleting the iface record %s: %s", iface, exc)

    def create_node(self, iqn: str, portal: str, settings: SessionSettings, chap: Chap | None = None, *,
                    recheck_iface: bool = False) -> None:
        """Create (or refresh) the record of one target portal with the given settings."""
        self.ensure_iface(settings, recheck=recheck_iface)
        node = self._node(iqn, portal, settings.iface)
        try:
            self._run([*node, "-o", "new"])
        except CommandFailed:
            if not settings.iface or recheck_iface:
                raise
            # The iface this process made may have been deleted behind it (csi-iscsi doctor, an
            # admin): made again, once, rather than failing every stage until a restart.
            self.ensure_iface(settings, recheck=True)
            self._run([*node, "-o", "new"])
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
            self._run([*node, "-o", "update", *pairs], secrets=secrets)
        except CommandFailed as exc:
            log.info("iscsiadm took only one setting per update (exit %d); setting them one by one", exc.returncode)
            for name, value in values.items():
                self._run([*node, "-o", "update", "-n", name, "-v", value], secrets=secrets)

    def login(self, iqn: str, portal: str, timeout: float, iface: str = "") -> None:
        self._run([*self._node(iqn, portal, iface), "--login"], ok_codes=(0, EXIT_SESSION_EXISTS), timeout=timeout)

    def logout_session(self, sid: int, timeout: float) -> None:
        """Log out of one session, whichever iface or record made it."""
        self._run(["-m", "session", "-r", str(sid), "--logout"], ok_codes=(0, EXIT_NO_OBJS_FOUND), timeout=timeout)

    def delete_target_records(self, iqn: str, iface: str = "") -> None:
        self._run(["-m", "node", "-T", iqn, *(["-I", iface] if iface else []), "-o", "delete"],
                  ok_codes=(0, EXIT_NO_OBJS_FOUND))

    def record_targets(self) -> list[str]:
        """Every target that has a node record on this host."""
        result = self._runner.run([ISCSIADM, "-m", "node"], ok_codes=(0, EXIT_NO_OBJS_FOUND), timeout=30)
        return sorted({parts[1] for parts in map(str.split, result.stdout.splitlines()) if len(parts) == 2})
