from __future__ import annotations

import grpc
import pytest

from csi_iscsi.base.runner import CommandFailed, CommandMissing, CommandTimedOut, SubprocessRunner


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
        returncode, stdout, stderr = 0, "", ""

    def fake_run(argv: list[str], **kwargs: object) -> Done:
        seen.append(argv)
        return Done()

    monkeypatch.setattr("subprocess.run", fake_run)
    SubprocessRunner(host_pid=1).run(["iscsiadm", "-m", "session"])
    assert seen[0][:2] == ("nsenter", "--target=1")
    assert seen[0][-3:] == ("iscsiadm", "-m", "session")
