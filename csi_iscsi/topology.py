"""Where a volume can be reached from: the zones the controller serves (the nodes of those zones
reach the portals), matched against a CreateVolume's accessibility requirements.

Every volume lives on the one target, so it is accessible from every served zone; a requirement
only narrows which of them the CO is told about and orders them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from csi_iscsi.base.errors import InvalidArgument, ResourceExhausted
from csi_iscsi.base.redact import quoted
from csi_iscsi.contract import TOPOLOGY_KEY
from csi_iscsi.csi import csi_pb2


def _zones_of(terms: Iterable[csi_pb2.Topology], what: str) -> list[str | None]:
    """The zone each term names; None for a term that names something this driver does not
    report (another key), which no volume of it can promise."""
    zones: list[str | None] = []
    for term in terms:
        segments = dict(term.segments)
        if not segments:
            raise InvalidArgument(f"accessibility_requirements.{what} holds a topology with no segments")
        zones.append(segments.get(TOPOLOGY_KEY) if set(segments) == {TOPOLOGY_KEY} else None)
    return zones


def accessible_zones(served: Sequence[str], requirements: csi_pb2.TopologyRequirement | None) -> list[str]:
    """The served zones the volume is reported accessible from: the preferred ones first, in the
    CO's order, then the rest; within requisite when the CO gives one. Raises ResourceExhausted
    when no served zone satisfies the requirements."""
    if requirements is None or (not requirements.requisite and not requirements.preferred):
        return list(served)
    preferred = _zones_of(requirements.preferred, "preferred")
    if requirements.requisite:
        requisite = _zones_of(requirements.requisite, "requisite")
        allowed = [z for z in served if z in requisite]
    else:
        allowed = list(served)
    if not allowed:
        asked = [dict(t.segments) for t in (requirements.requisite or requirements.preferred)][:5]
        raise ResourceExhausted(
            f"no zone this controller serves ({', '.join(quoted(z) for z in served)}) is among the requested "
            f"topologies {asked}; nodes there cannot reach the target's portals (StorageClass allowedTopologies, "
            f"the node's --zone and the controller's --serve-zone must agree on {TOPOLOGY_KEY})")
    first = [z for z in dict.fromkeys(preferred) if z is not None and z in allowed]
    return first + [z for z in allowed if z not in first]


def topologies(zones: Iterable[str]) -> list[csi_pb2.Topology]:
    return [csi_pb2.Topology(segments={TOPOLOGY_KEY: z}) for z in zones]
