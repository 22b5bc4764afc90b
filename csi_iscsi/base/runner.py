"""The one way the driver runs a command: bounded in time, typed errors, secrets masked.

In a container the node plugin runs the host's tools inside the host's namespaces
(nsenter into PID 1), so the host's iscsid and multipathd see the same state the driver does.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from csi_iscsi.base.errors import DeadlineExceeded, FailedPrecondition, Internal
from csi_iscsi.base.metrics import LazyMetric
from csi_iscsi.base.redact import redact_text

log = logging.getLogger(__name__)

COMMAND_SECONDS = LazyMetric(
    "Histogram",
    "csi_iscsi_command_duration_seconds",
    "Time spent in host commands, by program and outcome",
    ["program", "outcome"],
)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class CommandFailed(Internal):
    """A command exited with a status its caller did not expect."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, secrets: Collection[str]) -> None:
        self.argv = tuple(redact_text(a, secrets) for a in argv)
        self.returncode = returncode
        self.stderr = redact_text(stderr.strip(), secrets)
        detail = self.stderr.splitlines()[-1] if self.stderr else "no error output"
        super().__init__(f"{' '.join(self.argv)} exited with {returncode}: {detail}")


class CommandTimedOut(DeadlineExceeded):
    def __init__(self, argv: Sequence[str], timeout: float, secrets: Collection[str], stuck: bool = False) -> None:
        self.argv = tuple(redact_text(a, secrets) for a in argv)
        detail = " and did not exit after SIGKILL (uninterruptible I/O?); left behind" if stuck else ""
        super().__init__(f"{' '.join(self.argv)} did not finish within {timeout:g} s{detail}")


class CommandMissing(FailedPrecondition):
    def __init__(self, program: str) -> None:
        super().__init__(f"{program} is not installed on this host (or not on PATH)")


class Runner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        ok_codes: Collection[int] = (0,),
        secrets: Collection[str] = (),
        stdin: str | None = None,
    ) -> Result: ...


class SubprocessRunner:
    """Runs commands with subprocess, optionally inside the host's namespaces via nsenter."""

    # After SIGKILL a process in uninterruptible I/O (a read from a dead path, a suspended map) lives
    # on until its I/O ends, possibly never: wait this long for it, then leave it to a reaper thread.
    KILL_GRACE = 5.0

    def __init__(self, *, host_pid: int | None = None, default_timeout: float = 60.0,
                 env: Mapping[str, str] | None = None) -> None:
        self._prefix: tuple[str, ...] = ()
        if host_pid is not None:
            self._prefix = ("nsenter", f"--target={host_pid}", "--mount", "--uts", "--ipc", "--net", "--")
        self._default_timeout = default_timeout
        self._env = dict(env) if env is not None else None

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        ok_codes: Collection[int] = (0,),
        secrets: Collection[str] = (),
        stdin: str | None = None,
    ) -> Result:
        limit = self._default_timeout if timeout is None else timeout
        full = (*self._prefix, *argv)
        program = argv[0].rsplit("/", 1)[-1]
        start = time.monotonic()
        # Errors below are raised "from None": a chained OSError or TimeoutExpired carries the whole
        # argv, and a logged traceback would print it, secrets and all.
        try:
            proc = subprocess.Popen(full, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env)
        except FileNotFoundError:
            COMMAND_SECONDS.labels(program, "missing").observe(time.monotonic() - start)
            raise CommandMissing(full[0]) from None
        try:
            stdout, stderr = proc.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            COMMAND_SECONDS.labels(program, "timeout").observe(time.monotonic() - start)
            raise CommandTimedOut(argv, limit, secrets, stuck=not self._kill(proc)) from None
        seconds = time.monotonic() - start
        ok = proc.returncode in ok_codes
        COMMAND_SECONDS.labels(program, "ok" if ok else "error").observe(seconds)
        log.debug("ran %s -> %d in %.3f s", redact_text(" ".join(argv), secrets), proc.returncode, seconds)
        if not ok:
            raise CommandFailed(argv, proc.returncode, stderr or stdout, secrets)
        return Result(tuple(argv), proc.returncode, stdout, stderr, seconds)

    def _kill(self, proc: subprocess.Popen[str]) -> bool:
        """SIGKILL, then a bounded wait; False when the process outlived it (reaped later, off the call)."""
        proc.kill()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=self.KILL_GRACE)
            return True
        except subprocess.TimeoutExpired:
            log.error("pid %d (%s) did not exit %g s after SIGKILL; leaving it to exit on its own",
                      proc.pid, proc.args[0] if isinstance(proc.args, (list, tuple)) else "?", self.KILL_GRACE)
            threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
            return False
