from __future__ import annotations

import logging
import subprocess
import time
import traceback
from pathlib import Path

import grpc
import pytest

from csi_iscsi.base.runner import CommandFailed, CommandMissing, CommandTimedOut, SubprocessRunner
from csi_iscsi.chap import Chap
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings


def test_success_returns_output() -> None:
    result = SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_unexpected_exit_is_a_typed_error_without_secrets() -> None:
    with pytest.raises(CommandFailed) as err:
        SubprocessRunner().run(["sh", "-c", "echo bad hunter2 >&2; exit 3", "hunter2"], secrets=["hunter2"])
    assert err.value.returncode == 3
    assert "hunter2" not in str(err.value) and "hunter2" not in " ".join(err.value.argv)
    assert err.value.code == grpc.StatusCode.INTERNAL


def test_allowed_exit_codes_are_not_errors() -> None:
    assert SubprocessRunner().run(["sh", "-c", "exit 21"], ok_codes=(0, 21)).returncode == 21


def test_timeout_is_deadline_exceeded() -> None:
    with pytest.raises(CommandTimedOut) as err:
        SubprocessRunner().run(["sleep", "5"], timeout=0.2)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_missing_program_is_failed_precondition() -> None:
    with pytest.raises(CommandMissing) as err:
        SubprocessRunner().run(["no-such-program-csi-iscsi"])
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_host_mode_enters_the_host_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class Done:
        returncode = 0

        def __init__(self, argv: tuple[str, ...], **kwargs: object) -> None:
            seen.append(argv)

        def communicate(self, stdin: str | None, timeout: float) -> tuple[str, str]:
            return "", ""

    monkeypatch.setattr("subprocess.Popen", Done)
    SubprocessRunner(host_pid=1).run(["iscsiadm", "-m", "session"])
    assert seen[0][:2] == ("nsenter", "--target=1")
    assert seen[0][-3:] == ("iscsiadm", "-m", "session")


def test_a_timed_out_chap_update_logs_no_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 7: the timeout error must not chain subprocess.TimeoutExpired, whose text is the whole argv."""
    fake = tmp_path / "bin" / "iscsiadm"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$*" in *password*) sleep 5 ;; esac\n')
    fake.chmod(0o755)
    runner = SubprocessRunner(default_timeout=0.3, env={"PATH": f"{fake.parent}:/usr/bin:/bin"})
    chap = Chap("user", "pa55-secret-word", "tgt-user", "mutual-pa55-word")
    with pytest.raises(CommandTimedOut) as err:
        Iscsiadm(runner, db_retries=0).create_node("iqn.2026-11.io.csi-iscsi:csi-" + "a" * 32, "10.0.0.1:3260",
                                                   SessionSettings(), chap)
    with caplog.at_level(logging.ERROR):
        logging.getLogger("test").error("stage failed", exc_info=err.value)
    shown = caplog.text + "".join(traceback.format_exception(err.value))
    assert "iscsiadm" in shown
    for secret in chap.secrets():
        assert secret not in shown


def test_a_command_that_ignores_kill_is_not_waited_for_without_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process in uninterruptible I/O (D state) does not die of SIGKILL until its I/O ends: the
    runner gives up on it after a bounded grace instead of blocking the RPC with it."""
    monkeypatch.setattr(subprocess.Popen, "kill", lambda self: None)  # what SIGKILL does to a D-state process
    monkeypatch.setattr(SubprocessRunner, "KILL_GRACE", 0.5, raising=False)
    start = time.monotonic()
    with pytest.raises(CommandTimedOut) as err:
        SubprocessRunner().run(["sleep", "8"], timeout=0.3)
    assert time.monotonic() - start < 4
    assert "did not exit after SIGKILL" in str(err.value)
