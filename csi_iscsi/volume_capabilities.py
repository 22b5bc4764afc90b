"""Which CSI volume capabilities csi-iscsi serves, checked the same way by both plugins."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from csi_iscsi.base.errors import InvalidArgument
from csi_iscsi.base.redact import quoted
from csi_iscsi.csi import csi_pb2

SUPPORTED_FSTYPES = ("ext4", "xfs")
DEFAULT_FSTYPE = "ext4"
# Mount flags a volume may ask for; anything else is refused before a command runs.
ALLOWED_MOUNT_FLAGS = frozenset({
    "ro", "rw", "noatime", "relatime", "nodiratime", "nodev", "nosuid", "noexec", "sync", "dirsync",
    "discard", "nodiscard", "nobarrier", "lazytime", "data=ordered", "data=journal", "data=writeback",
    # XFS: a volume made from a snapshot or a volume carries its source's UUID (docs/snapshots.md).
    "nouuid",
})

# The SELinux context kubelet adds to the mount options when the CSIDriver says seLinuxMount: true
# (quoted, since its category list holds commas). Matched whole, so no other option rides along.
SELINUX_CONTEXT_FLAG = re.compile(r'context="[a-z0-9_]+:[a-z0-9_]+:[a-z0-9_]+:s[0-9]+(-s[0-9]+)?'
                                  r'(:c[0-9]+([.,]c[0-9]+)*)?"')

Mode = csi_pb2.VolumeCapability.AccessMode
SINGLE_NODE_MODES = frozenset({
    Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY, Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
})
# Many readers of one raw device are safe when every mapping is write-protected; many writers, or a
# filesystem mounted on several nodes, are not, so those modes are refused.
BLOCK_ONLY_MODES = frozenset({Mode.MULTI_NODE_READER_ONLY})
READONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})


@dataclass(frozen=True)
class Requested:
    access_type: str  # "mount" or "block"
    modes: tuple[str, ...]
    fs_type: str
    mount_flags: tuple[str, ...]


def check_fstype(fstype: str) -> str:
    fstype = fstype or DEFAULT_FSTYPE
    if fstype not in SUPPORTED_FSTYPES:
        raise InvalidArgument(f"filesystem type {quoted(fstype)} is not supported; "
                              f"use one of {sorted(SUPPORTED_FSTYPES)}")
    return fstype


def check_mount_flags(flags: Sequence[str]) -> list[str]:
    bad = [f for f in flags if f not in ALLOWED_MOUNT_FLAGS and not SELINUX_CONTEXT_FLAG.fullmatch(f)]
    if bad:
        shown = ", ".join(quoted(f, 40) for f in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InvalidArgument(f"mount flags {shown} are not allowed; allowed: {sorted(ALLOWED_MOUNT_FLAGS)}")
    return list(flags)


def mode_name(mode: int) -> str:
    return str(Mode.Mode.Name(mode))


def check_one(cap: csi_pb2.VolumeCapability) -> Requested:
    flags: tuple[str, ...] = ()
    if cap.HasField("block"):
        access_type, fs_type = "block", ""
    elif cap.HasField("mount"):
        access_type = "mount"
        fs_type = check_fstype(cap.mount.fs_type)
        flags = tuple(check_mount_flags(list(cap.mount.mount_flags)))
    else:
        raise InvalidArgument("a volume capability needs an access type: mount or block")
    mode = cap.access_mode.mode
    if mode not in SINGLE_NODE_MODES and not (access_type == "block" and mode in BLOCK_ONLY_MODES):
        raise InvalidArgument(
            f"access mode {mode_name(mode)} is not supported for {access_type} volumes; supported: "
            "SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER, "
            "and MULTI_NODE_READER_ONLY for block volumes")
    return Requested(access_type, (mode_name(mode),), fs_type, flags)


def check_all(caps: Iterable[csi_pb2.VolumeCapability]) -> Requested:
    checked = [check_one(c) for c in caps]
    if not checked:
        raise InvalidArgument("volume_capabilities is required")
    types = {c.access_type for c in checked}
    if len(types) > 1:
        raise InvalidArgument("a volume is either mount or block, not both")
    modes = tuple(sorted({m for c in checked for m in c.modes}))
    return Requested(checked[0].access_type, modes, checked[0].fs_type, checked[0].mount_flags)


# A publish may ask for the mode the volume was created with, or one that is narrower. Kubernetes sends
# ReadWriteOnce as SINGLE_NODE_WRITER or SINGLE_NODE_MULTI_WRITER depending on the driver's
# capabilities when it asked, so those two stand for each other.
_ALSO_ALLOWED_BY = {
    "SINGLE_NODE_WRITER": {"SINGLE_NODE_MULTI_WRITER"},
    "SINGLE_NODE_MULTI_WRITER": {"SINGLE_NODE_WRITER"},
    "SINGLE_NODE_SINGLE_WRITER": {"SINGLE_NODE_WRITER", "SINGLE_NODE_MULTI_WRITER"},
    "SINGLE_NODE_READER_ONLY": {"SINGLE_NODE_WRITER", "SINGLE_NODE_MULTI_WRITER", "SINGLE_NODE_SINGLE_WRITER",
                                "MULTI_NODE_READER_ONLY"},
    "MULTI_NODE_READER_ONLY": set(),
}


def mode_allowed(requested: str, volume_modes: Iterable[str]) -> bool:
    """Whether a volume created for volume_modes may be published with the requested mode."""
    modes = set(volume_modes)
    return requested in modes or bool(_ALSO_ALLOWED_BY.get(requested, set()) & modes)


def is_single_node(modes: Iterable[str]) -> bool:
    return any(Mode.Mode.Value(m) in SINGLE_NODE_MODES for m in modes)
