"""Domain errors, and the one place that maps them to gRPC status codes.

Layers below the servicers raise these (never grpc errors); the server's interceptor turns
them into the status code the CSI spec names. Messages must say what to do, and must never
carry a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc


class _Code:
    """A class's gRPC status code, by name: grpc is imported when a code is first read, so the
    tools that never answer a call (csi-iscsi status) do not pay for importing it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[self.name]


class CsiIscsiError(Exception):
    """Base of every error the driver raises on purpose."""

    code = _Code("INTERNAL")


class InvalidArgument(CsiIscsiError):
    code = _Code("INVALID_ARGUMENT")


class NotFound(CsiIscsiError):
    code = _Code("NOT_FOUND")


class AlreadyExists(CsiIscsiError):
    code = _Code("ALREADY_EXISTS")


class FailedPrecondition(CsiIscsiError):
    code = _Code("FAILED_PRECONDITION")


class ResourceExhausted(CsiIscsiError):
    code = _Code("RESOURCE_EXHAUSTED")


class OutOfRange(CsiIscsiError):
    code = _Code("OUT_OF_RANGE")


class Aborted(CsiIscsiError):
    """Another operation on the same volume is in flight; the caller retries."""

    code = _Code("ABORTED")


class Unavailable(CsiIscsiError):
    code = _Code("UNAVAILABLE")


class DeadlineExceeded(CsiIscsiError):
    code = _Code("DEADLINE_EXCEEDED")


class Internal(CsiIscsiError):
    code = _Code("INTERNAL")


# gRPC carries the status message in metadata (8 KiB soft, 16 KiB hard limit): past it the caller
# gets RESOURCE_EXHAUSTED instead of the real code. Messages quote request fields in bounded form
# (base.redact.quoted); this cap is the last line.
MESSAGE_LIMIT = 2048


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception escaping a servicer."""
    if isinstance(exc, CsiIscsiError):
        text = str(exc)
        if len(text) > MESSAGE_LIMIT:
            text = text[:MESSAGE_LIMIT] + f"... ({len(text)} characters, cut)"
        return exc.code, text
    import grpc

    # An unexpected exception's text may hold anything; keep it out of the reply.
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the plugin's log"
