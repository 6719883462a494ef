"""The control plane's registry as Python values: components and watch events with
lowercase kind and status names (as `flowplane components` prints them), the full proto
kept beside them. Read-only: nothing here registers or heartbeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from flowplane.common.v1 import common_pb2
from flowplane.controlplane.v1 import control_plane_pb2
from flowplane.data.v1 import data_pb2

__all__ = ["Component", "WatchEvent"]

KINDS = {
    "processor": common_pb2.COMPONENT_KIND_PROCESSOR,
    "source": common_pb2.COMPONENT_KIND_SOURCE,
    "consumer": common_pb2.COMPONENT_KIND_CONSUMER,
}
STATUSES = {
    "starting": common_pb2.HEALTH_STATUS_STARTING,
    "healthy": common_pb2.HEALTH_STATUS_HEALTHY,
    "degraded": common_pb2.HEALTH_STATUS_DEGRADED,
    "unhealthy": common_pb2.HEALTH_STATUS_UNHEALTHY,
    "stopping": common_pb2.HEALTH_STATUS_STOPPING,
}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_STATUS_NAMES = {v: k for k, v in STATUSES.items()}
_REASONS = {
    control_plane_pb2.REMOVAL_REASON_DEREGISTERED: "deregistered",
    control_plane_pb2.REMOVAL_REASON_EXPIRED: "expired",
}

EventKind = Literal["snapshot", "added", "updated", "removed"]


def kind_filter(kind: str | None) -> common_pb2.ComponentKind.ValueType:
    if kind is None:
        return common_pb2.COMPONENT_KIND_UNSPECIFIED
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}") from None


def status_filter(status: str | None) -> common_pb2.HealthStatus.ValueType:
    if status is None:
        return common_pb2.HEALTH_STATUS_UNSPECIFIED
    try:
        return STATUSES[status]
    except KeyError:
        raise ValueError(f"status: {status!r} is not one of {', '.join(STATUSES)}") from None


@dataclass(frozen=True)
class Component:
    """One registered processor host, source or consumer."""

    id: str
    kind: str
    status: str
    """Effective status: the reported one, or unhealthy when heartbeats are late."""
    reported_status: str
    endpoint: str
    capabilities: tuple[str, ...]
    """Names of the processors a host serves."""
    data_types: tuple[str, ...]
    metadata: Mapping[str, str]
    version: str
    proto: control_plane_pb2.Component = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, c: control_plane_pb2.Component) -> Component:
        return cls(
            id=c.id,
            kind=_KIND_NAMES.get(c.kind, "unspecified"),
            status=_STATUS_NAMES.get(c.status, "unspecified"),
            reported_status=_STATUS_NAMES.get(c.reported_status, "unspecified"),
            endpoint=c.endpoint,
            capabilities=tuple(p.name for p in c.capabilities),
            data_types=tuple(
                data_pb2.DataTypeHint.Name(t).removeprefix("DATA_TYPE_HINT_").lower()
                for t in c.data_types
            ),
            metadata=dict(c.metadata),
            version=c.version,
            proto=c,
        )


@dataclass(frozen=True)
class WatchEvent:
    """A snapshot of every matching component, or one change."""

    kind: EventKind
    revision: int
    components: tuple[Component, ...]
    """Every matching component for a snapshot; the one concerned otherwise."""
    resync: bool = False
    """True on a snapshot that replaces earlier state because the watcher fell behind."""
    reason: str = ""
    """Why a removed component left: deregistered or expired."""

    @classmethod
    def from_proto(cls, m: control_plane_pb2.WatchComponentsResponse) -> WatchEvent:
        event = m.WhichOneof("event")
        if event == "snapshot":
            comps = tuple(Component.from_proto(c) for c in m.snapshot.components)
            return cls("snapshot", m.revision, comps, resync=m.snapshot.resync)
        if event == "added":
            return cls("added", m.revision, (Component.from_proto(m.added),))
        if event == "updated":
            return cls("updated", m.revision, (Component.from_proto(m.updated),))
        if event == "removed":
            comp = (
                (Component.from_proto(m.removed.component),)
                if m.removed.HasField("component")
                else ()
            )
            return cls(
                "removed", m.revision, comp, reason=_REASONS.get(m.removed.reason, "unspecified")
            )
        raise ValueError("event: a watch message with no event set")


def list_request(
    kind: str | None,
    status: str | None,
    capability: str | None,
    labels: Mapping[str, str] | None,
    page_token: str,
    page_size: int,
) -> control_plane_pb2.ListComponentsRequest:
    return control_plane_pb2.ListComponentsRequest(
        kind=kind_filter(kind),
        status=status_filter(status),
        capability=capability or "",
        labels=dict(labels or {}),
        page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
    )
