"""CHAP credentials: read from a CSI secret map the same way on both sides of the wire."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from csi_iscsi.base.errors import InvalidArgument
from csi_iscsi.base.redact import quoted
from csi_iscsi.contract import AUTH_MODES, SecretKeys

# Written to configfs and to iscsiadm as single tokens: printable ASCII, no whitespace.
_VALUE = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class Chap:
    """user/password: the initiator proves itself; mutual_*: the target proves itself back."""

    user: str
    password: str = field(repr=False)
    mutual_user: str = ""
    mutual_password: str = field(default="", repr=False)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.mutual_password) if s)


def chap_from_secrets(auth: str, secrets: dict[str, str], secret_ref: str) -> Chap | None:
    """The credentials `auth` (none, chap, mutual) needs, from a CSI secret map; values never in errors."""
    if auth not in AUTH_MODES:
        raise InvalidArgument(f"authentication {quoted(auth)} is not one of {list(AUTH_MODES)}")
    if auth == "none":
        return None
    needed = [SecretKeys.USER, SecretKeys.PASSWORD]
    if auth == "mutual":
        needed += [SecretKeys.MUTUAL_USER, SecretKeys.MUTUAL_PASSWORD]
    missing = [k for k in needed if not secrets.get(k)]
    if missing:
        raise InvalidArgument(f"the volume requires {auth} CHAP but the secret lacks {missing} ({secret_ref})")
    bad = [k for k in needed if not _VALUE.fullmatch(secrets[k])]
    if bad:
        raise InvalidArgument(f"secret values {bad} must be 1-255 printable ASCII characters without spaces")
    # LIO's configfs takes a value that starts with NULL as "unset": the ACL would not ask for it.
    unset = [k for k in needed if secrets[k].startswith("NULL")]
    if unset:
        raise InvalidArgument(f"secret values {unset} must not start with 'NULL' (LIO reads such a value as unset)")
    mutual = auth == "mutual"
    return Chap(secrets[SecretKeys.USER], secrets[SecretKeys.PASSWORD],
                secrets[SecretKeys.MUTUAL_USER] if mutual else "",
                secrets[SecretKeys.MUTUAL_PASSWORD] if mutual else "")
