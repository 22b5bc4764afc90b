"""Fakes at the command-runner seam: record every argv, answer from a script."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from csi_iscsi.host.runner import CommandFailed, Result

Responder = Callable[[tuple[str, ...]], tuple[int, str] | None]


@dataclass
class FakeRunner:
    """Answers each command with the first responder that knows it, else exit 0 and no output."""

    responders: list[Responder] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    secrets_seen: list[tuple[str, ...]] = field(default_factory=list)

    def on(self, prefix: Sequence[str], returncode: int = 0, stdout: str = "", times: int | None = None) -> None:
        want = tuple(prefix)
        left = [times]

        def responder(argv: tuple[str, ...]) -> tuple[int, str] | None:
            if argv[: len(want)] != want or left[0] == 0:
                return None
            if left[0] is not None:
                left[0] -= 1
            return returncode, stdout

        self.responders.insert(0, responder)

    def run(self, argv: Sequence[str], *, timeout: float | None = None, ok_codes: Collection[int] = (0,),
            secrets: Collection[str] = (), stdin: str | None = None) -> Result:
        call = tuple(argv)
        self.calls.append(call)
        self.secrets_seen.append(tuple(secrets))
        rc, out = 0, ""
        for responder in self.responders:
            answer = responder(call)
            if answer is not None:
                rc, out = answer
                break
        if rc not in ok_codes:
            raise CommandFailed(call, rc, f"fake failure of {call[0]}", secrets)
        return Result(call, rc, out, "", 0.0)

    def programs(self) -> list[str]:
        return [c[0] for c in self.calls]
