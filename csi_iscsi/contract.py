"""The contract between the two plugins, Kubernetes, the chart and the tests.

docs/contract.md is the prose version of this module; keep both in step. Everything a request
carries that can reach a path, a configfs name or a command line is checked here first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DRIVER_NAME = "iscsi.csi-iscsi.io"

# Target IQNs are <prefix>:<volume id>; the prefix is the controller's (configurable).
DEFAULT_TARGET_IQN_PREFIX = "iqn.2026-11.io.csi-iscsi"
# LIO's unit serials become WWIDs: NAA type 6 with LIO's OUI (6001405) and the serial's hex.
LIO_WWID_PREFIX = "36001405"
WWID_SERIAL_DIGITS = 25

TOPOLOGY_KEY = f"topology.{DRIVER_NAME}/zone"
DEFAULT_ZONE = "default"


class VolumeContext:
    """Keys of CreateVolumeResponse.volume.volume_context (read by the node in NodeStage)."""

    TARGET_IQN = "targetIQN"
    PORTALS = "portals"  # comma-separated host:port, one per path
    LUN = "lun"
    WWID = "wwid"
    POOL = "pool"


class PublishContext:
    """Keys of ControllerPublishVolumeResponse.publish_context."""

    TARGET_IQN = VolumeContext.TARGET_IQN
    PORTALS = VolumeContext.PORTALS
    LUN = VolumeContext.LUN
    WWID = VolumeContext.WWID
    AUTH = "authentication"  # none | chap | mutual: what the ACL demands


class SecretKeys:
    """Keys of the controller-publish and node-stage secrets (one Secret serves both)."""

    USER = "chapUser"
    PASSWORD = "chapPassword"
    MUTUAL_USER = "chapMutualUser"
    MUTUAL_PASSWORD = "chapMutualPassword"
    DISCOVERY_USER = "discoveryChapUser"
    DISCOVERY_PASSWORD = "discoveryChapPassword"


class Parameters:
    """StorageClass parameters (CreateVolumeRequest.parameters)."""

    POOL = "pool"
    AUTHENTICATION = "authentication"
    KUBERNETES_PREFIX = "csi.storage.k8s.io/"  # Kubernetes' own keys; ignored by the driver


AUTH_MODES = ("none", "chap", "mutual")

# Volume ids are ours alone: "csi-" and 32 hex digits derived from the volume name.
VOLUME_ID_RE = re.compile(r"^csi-[0-9a-f]{32}$")
SNAPSHOT_ID_RE = re.compile(r"^snap-[0-9a-f]{32}$")
# Kubernetes node names are DNS subdomains.
NODE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# RFC 3720 names after RFC 3722's normalisation: lowercase letters, digits, '-', '.' and ':', as
# iqn.yyyy-mm.reversed.domain[:suffix] or eui. and 16 hex digits. LIO keeps (and rtslib writes)
# every initiator name lowercased, so the driver compares, records and presents names only in that
# form: a name in another case is normalised once, where it enters (normalize_iqn).
IQN_RE = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[a-z0-9.:-]+)?|eui\.[0-9a-f]{16})$")
IQN_MAX_BYTES = 223
NODE_ID_MAX_BYTES = 256
PORTAL_RE = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d{1,5}$")
POOL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def volume_id_for_name(name: str) -> str:
    """The volume id is a pure function of the CreateVolume name, so a retry lands on the same id."""
    import hashlib  # here: loading OpenSSL costs `csi-iscsi status` a tenth of a second under emulation

    return "csi-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def is_volume_id(value: str) -> bool:
    return bool(VOLUME_ID_RE.fullmatch(value))


def snapshot_id_for_name(name: str) -> str:
    """Like volume ids: a retried CreateSnapshot lands on the same id. The prefix keeps snapshot
    and volume ids (and so their LVs and pool files) apart."""
    import hashlib

    return "snap-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def is_snapshot_id(value: str) -> bool:
    return bool(SNAPSHOT_ID_RE.fullmatch(value))


def unit_serial(volume_id: str) -> str:
    """The LUN's unit serial (rtslib's wwn=), a UUID-shaped string of the volume id's hex digits."""
    h = volume_id.removeprefix("csi-")
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def wwid(volume_id: str) -> str:
    """The WWID the initiator sees for the volume's LUN, and so the dm-multipath map name."""
    return LIO_WWID_PREFIX + volume_id.removeprefix("csi-")[:WWID_SERIAL_DIGITS]


def target_iqn(volume_id: str, prefix: str = DEFAULT_TARGET_IQN_PREFIX) -> str:
    return f"{prefix}:{volume_id}"


def is_iqn(value: str) -> bool:
    """Whether value is an iSCSI name in its normal (lowercase) form."""
    return len(value.encode()) <= IQN_MAX_BYTES and bool(IQN_RE.fullmatch(value))


def normalize_iqn(value: str) -> str | None:
    """The normal form of an iSCSI name (lowercased, as LIO keeps it), or None if it is not one."""
    lowered = value.strip().lower()
    return lowered if is_iqn(lowered) else None


def is_target_iqn_prefix(prefix: str) -> bool:
    """A prefix is usable only if every target IQN made from it is one the node plugin accepts
    (an eui. name has no room for a suffix, and IQNs are lowercase before the colon)."""
    return prefix.startswith("iqn.") and ":" not in prefix and is_iqn(target_iqn("csi-" + "0" * 32, prefix))


_IPV4_PORTAL_RE = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}:\d{1,5}")


def canonical_portal(portal: str) -> str:
    """One spelling of ip:port, to compare a portal as given with one as sysfs writes it ("fd00::2",
    not "fd00:0::2")."""
    host, _, port = portal.rpartition(":")
    if _IPV4_PORTAL_RE.fullmatch(portal):
        return portal  # already canonical (ipaddress, imported only for the rest, rejects leading zeros)
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return portal.lower()
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def volume_id_of(target_iqn: str) -> str:
    """The volume id a target IQN of the driver's form ends in; "" for any other target."""
    suffix = target_iqn.rpartition(":")[2]
    return suffix if is_volume_id(suffix) else ""


def is_portal(value: str) -> bool:
    if not PORTAL_RE.fullmatch(value):
        return False
    port = int(value.rsplit(":", 1)[1])
    return 0 < port < 65536


@dataclass(frozen=True)
class NodeId:
    """node_id = <Kubernetes node name>/<initiator IQN>: unique per node even for cloned IQNs."""

    node_name: str
    initiator_iqn: str

    def __str__(self) -> str:
        return f"{self.node_name}/{self.initiator_iqn}"

    @classmethod
    def parse(cls, value: str) -> NodeId | None:
        """The NodeId in value, or None when value cannot be one of ours."""
        if len(value.encode()) > NODE_ID_MAX_BYTES or value.count("/") != 1:
            return None
        name, raw_iqn = value.split("/")
        iqn = normalize_iqn(raw_iqn)
        if not NODE_NAME_RE.fullmatch(name) or iqn is None:
            return None
        return cls(name, iqn)
