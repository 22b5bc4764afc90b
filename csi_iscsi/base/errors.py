"""Domain errors, and the one place that maps them to gRPC status codes.

Layers below the servicers raise these (never grpc errors); the server's interceptor turns
them into the status code the CSI spec names. Messages must say what to do, and must never
carry a secret.
"""

from __future__ import annotations

import grpc


class CsiIscsiError(Exception):
    """Base of every error the driver raises on purpose."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(CsiIscsiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CsiIscsiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CsiIscsiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CsiIscsiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(CsiIscsiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(CsiIscsiError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Aborted(CsiIscsiError):
    """Another operation on the same volume is in flight; the caller retries."""

    code = grpc.StatusCode.ABORTED


class Unavailable(CsiIscsiError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CsiIscsiError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(CsiIscsiError):
    code = grpc.StatusCode.INTERNAL


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
    # An unexpected exception's text may hold anything; keep it out of the reply.
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the plugin's log"
