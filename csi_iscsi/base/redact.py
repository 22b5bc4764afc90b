"""Keeping secrets out of texts, and caller-supplied values short in them."""

from __future__ import annotations

from collections.abc import Collection

MASK = "***"
# gRPC carries a status message in 8 KiB of metadata: a request field echoed whole can push an
# answer past it (RESOURCE_EXHAUSTED instead of the real code), and a log line past reason.
QUOTE_LIMIT = 80


def redact_text(text: str, secrets: Collection[str]) -> str:
    """text with every (non-trivial) secret value replaced by the mask."""
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr() of a caller-supplied value, cut to a bounded prefix that says how long the value was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
