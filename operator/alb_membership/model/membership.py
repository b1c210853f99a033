"""Which ALB server a pod or an endpoint is, and whether it is going away. Pure functions over API objects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from alb_membership.alb.models import Server
from alb_membership.model.spec import Backend, Spec

ECI_ANNOTATION = "k8s.aliyun.com/eci-instance-id"
DEFAULT_ENI_ANNOTATION = "k8s.aliyun.com/eni-id"
# A pod's readiness gate for one resource is the condition type GATE_PREFIX + the resource's name (PRODUCT.md 3.12).
GATE_PREFIX = "target-health.albmembership.io/"


def gate_condition(resource_name: str) -> str:
    return GATE_PREFIX + resource_name


class UnmappablePod(ValueError):
    """The pod lacks what its backend type needs (an ECI or ENI id); the message says which annotation."""


@dataclass(frozen=True, slots=True)
class PodView:
    """What the operator needs to know of a pod (kept in an index, so small)."""

    namespace: str
    name: str
    uid: str
    ip: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    deletion_started: dt.datetime | None  # when graceful deletion began (deletionTimestamp minus grace)
    terminal: bool  # phase Succeeded or Failed
    ready: bool = False  # the Ready condition is True
    containers_ready: bool = False  # the ContainersReady condition is True
    # This operator's readiness gates the pod declares: (resource name, the condition's status, its reason) now,
    # status and reason "" while it has none. A tuple: most pods declare none, and it stays hashable.
    gates: tuple[tuple[str, str, str], ...] = ()
    pending: bool = False  # phase Pending (the Eviction API deletes such a pod without judging its budget)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], eni_annotation: str = DEFAULT_ENI_ANNOTATION) -> PodView:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        annotations = meta.get("annotations") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or ()}
        declared = [g.get("conditionType", "") for g in (body.get("spec") or {}).get("readinessGates") or ()]
        gates = tuple(
            (
                t.removeprefix(GATE_PREFIX),
                str((conditions.get(t) or {}).get("status", "")),
                str((conditions.get(t) or {}).get("reason", "")),
            )
            for t in declared
            if t.startswith(GATE_PREFIX)
        )
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            ip=status.get("podIP") or None,
            labels=dict(meta.get("labels") or {}),
            annotations={k: annotations[k] for k in (ECI_ANNOTATION, eni_annotation) if k in annotations},
            deletion_started=deletion_started(meta),
            terminal=status.get("phase") in ("Succeeded", "Failed"),
            ready=(conditions.get("Ready") or {}).get("status") == "True",
            containers_ready=(conditions.get("ContainersReady") or {}).get("status") == "True",
            gates=gates,
            pending=status.get("phase") == "Pending",
        )

    @property
    def going_away(self) -> bool:
        return self.deletion_started is not None or self.terminal

    def registrable_for(self, resource_name: str) -> bool:
        """Ready to take traffic from the group of ``resource_name``: Ready, or, when the pod declares that
        resource's readiness gate (which keeps it not Ready until its server is in), its containers ready."""
        return not self.going_away and (self.ready or (self.containers_ready and self.declares(resource_name)))

    def declares(self, resource_name: str) -> bool:
        """Whether the pod lists the readiness gate of the resource named ``resource_name``."""
        return any(name == resource_name for name, _, _ in self.gates)

    def gate(self, resource_name: str) -> tuple[str, str]:
        """The (status, reason) of that readiness gate's condition now; ("", "") while it has none."""
        return next(((status, reason) for name, status, reason in self.gates if name == resource_name), ("", ""))


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def deletion_started(meta: Mapping[str, Any]) -> dt.datetime | None:
    """deletionTimestamp is when the grace period *ends*; the deletion began grace seconds earlier."""
    when = parse_time(meta.get("deletionTimestamp"))
    if when is None:
        return None
    return when - dt.timedelta(seconds=int(meta.get("deletionGracePeriodSeconds") or 0))


def server_for(backend: Backend, ip: str | None, annotations: Mapping[str, str], eni_annotation: str) -> Server | None:
    """The ALB server for a pod (or endpoint) under ``backend``; None while it has no IP yet."""
    if not ip:
        return None
    if backend.server_type == "Ip":
        return Server("Ip", ip, backend.port)
    if backend.server_type == "Eci":
        eci = annotations.get(ECI_ANNOTATION)
        if not eci:
            raise UnmappablePod(f"backend Eci needs the pod annotation {ECI_ANNOTATION}")
        return Server("Eci", eci, backend.port)
    eni = annotations.get(eni_annotation)
    if not eni:
        raise UnmappablePod(f"backend Eni needs the pod annotation {eni_annotation}")
    return Server("Eni", eni, backend.port, ip)


class EndpointView(NamedTuple):
    """A NamedTuple, not a dataclass: a slice brings up to 100 of them per event, made and compared in C."""

    address: str
    terminating: bool
    pod_name: str | None
    pod_uid: str | None
    ready: bool = True


def endpoints_of(slice_body: Mapping[str, Any]) -> list[EndpointView]:
    out = []
    for ep in slice_body.get("endpoints") or []:
        conditions = ep.get("conditions") or {}
        ref = ep.get("targetRef") or {}
        pod = ref if ref.get("kind") == "Pod" else {}
        for address in ep.get("addresses") or []:
            out.append(
                EndpointView(
                    address=address,
                    terminating=bool(conditions.get("terminating")),
                    pod_name=pod.get("name"),
                    pod_uid=pod.get("uid"),
                    # Absent means ready (the API's rule for the ready condition).
                    ready=conditions.get("ready") is not False,
                )
            )
    return out


@dataclass(frozen=True)
class Seen:
    """An owner of a server as the cluster shows it now."""

    owner_id: str
    server: Server
    source: str  # pod | endpoint | static
    name: str | None = None
    leaving: bool = False
    trigger: str | None = None
    deletion_started: dt.datetime | None = None
    # Succeeded or Failed: its IP went back to the pool, so it may be another pod's by now. Such a pod is acted on
    # only if it was recorded while it still held the IP.
    terminal: bool = False
    # Ready to take traffic as its source tells (a pod's Ready, an endpoint's ready; a static server always):
    # whether it may be added also depends on the pod's readiness gates (engine/decisions.py).
    ready: bool = True
    pod_uid: str | None = None  # the pod behind a pod or endpoint owner


MapServer = Callable[[str | None, Mapping[str, str], "PodView | None"], "Server | None"]


def pod_owner(spec: Spec, pod: PodView, map_server: MapServer) -> Seen | None:
    """The pod as an owner under ``spec``'s podSelector; None when the selector does not pick it (or it has no
    server yet)."""
    if spec.pod_selector is None or spec.backend is None or not spec.pod_selector.matches(pod.labels):
        return None
    server = map_server(pod.ip, pod.annotations, pod)
    if server is None:
        return None
    return Seen(
        pod.uid,
        server,
        "pod",
        pod.name,
        leaving=pod.going_away,
        trigger="pod-terminating" if pod.going_away else None,
        deletion_started=pod.deletion_started,
        terminal=pod.terminal,
        ready=pod.ready,
        pod_uid=pod.uid,
    )


def endpoint_key(ep: EndpointView) -> str:
    """What tells an endpoint's owner apart within its Service: its pod's UID, or its address without a pod."""
    return ep.pod_uid or ep.address


def endpoint_id(service: str, ep: EndpointView) -> str:
    """The Service is part of the id: an endpoint of a Service no longer referenced is another owner."""
    return endpoint_owner_id(service, endpoint_key(ep))


def endpoint_owner_id(service: str, key: str) -> str:
    """``key``: the endpoint's pod UID, or its address without a pod (endpoint_key)."""
    return f"endpoint/{service}/{key}"


def endpoint_parts(owner_id: str) -> tuple[str, str]:
    """(Service, pod UID or address) of an endpoint owner id."""
    service, _, rest = owner_id.removeprefix("endpoint/").partition("/")
    return service, rest


def endpoint_owners(
    spec: Spec,
    endpoints: Iterable[EndpointView],
    pod_named: Callable[[str], PodView | None],
    map_server: MapServer,
) -> dict[str, Seen]:
    """Endpoints of serviceRef across all its EndpointSlices (or all the endpoints of some owners); an endpoint
    leaves when it turns terminating or its pod is going away, whichever the operator sees first."""
    out: dict[str, Seen] = {}
    if spec.service_name is None or spec.backend is None:
        return out
    for ep in endpoints:
        pod = pod_named(ep.pod_name) if ep.pod_name else None
        if pod is not None and ep.pod_uid and pod.uid != ep.pod_uid:
            pod = None  # a newer pod of the same name
        server = map_server(ep.address, pod.annotations if pod is not None else {}, pod)
        if server is None:
            continue
        leaving = ep.terminating or (pod is not None and pod.going_away)
        seen = Seen(
            endpoint_id(spec.service_name, ep),
            server,
            "endpoint",
            ep.pod_name,
            leaving=leaving,
            trigger="endpoint-terminating" if leaving else None,
            deletion_started=pod.deletion_started if pod is not None else None,
            ready=ep.ready,
            pod_uid=pod.uid if pod is not None else None,
        )
        if seen.owner_id not in out or not leaving:  # an address in two slices counts as live if one says so
            out[seen.owner_id] = seen
    return out


def static_owners(spec: Spec) -> dict[str, Seen]:
    return {f"static/{s.compact}": Seen(f"static/{s.compact}", s, "static") for s in spec.servers}
