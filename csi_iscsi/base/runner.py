"""The one way the driver runs a command: bounded in time, typed errors, secrets masked.

In a container the node plugin runs the host's tools inside the host's namespaces
(nsenter into PID 1), so the host's iscsid and multipathd see the same state the driver does.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Histogram

from csi_iscsi.base.errors import DeadlineExceeded, FailedPrecondition, Internal
from csi_iscsi.base.redact import redact_text

log = logging.getLogger(__name__)

COMMAND_SECONDS = Histogram(
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
    def __init__(self, argv: Sequence[str], timeout: float, secrets: Collection[str]) -> None:
        self.argv = tuple(redact_text(a, secrets) for a in argv)
        super().__init__(f"{' '.join(self.argv)} did not finish within {timeout:g} s")


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
        try:
            proc = subprocess.run(
                full, input=stdin, capture_output=True, text=True, timeout=limit,
                env=self._env, check=False,
            )
        except FileNotFoundError as exc:
            COMMAND_SECONDS.labels(program, "missing").observe(time.monotonic() - start)
            raise CommandMissing(full[0]) from exc
        except subprocess.TimeoutExpired as exc:
            COMMAND_SECONDS.labels(program, "timeout").observe(time.monotonic() - start)
            raise CommandTimedOut(argv, limit, secrets) from exc
        seconds = time.monotonic() - start
        ok = proc.returncode in ok_codes
        COMMAND_SECONDS.labels(program, "ok" if ok else "error").observe(seconds)
        log.debug("ran %s -> %d in %.3f s", redact_text(" ".join(argv), secrets), proc.returncode, seconds)
        if not ok:
            raise CommandFailed(argv, proc.returncode, proc.stderr or proc.stdout, secrets)
        return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr, seconds)
