"""Who a resource's spec picks in the cluster now: pods, endpoints, static servers. Pure: reads a view, returns
values. A member that cannot be mapped to an ALB server (an Eci/Eni pod without its annotation) is returned too,
so that whoever acts on the result can tell a person, once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from alb_membership.alb.models import Server
from alb_membership.model.membership import (
    MapServer,
    PodView,
    Seen,
    UnmappablePod,
    endpoint_owners,
    endpoint_parts,
    pod_owner,
    server_for,
    static_owners,
)
from alb_membership.model.spec import Spec
from alb_membership.model.view import ClusterView


@dataclass(frozen=True)
class Unmappable:
    name: str  # the pod's name, or the endpoint's address
    reason: str


@dataclass
class Scan:
    """Owners found, by owner id, and the members that could not be mapped."""

    owners: dict[str, Seen] = field(default_factory=dict)
    unmappable: list[Unmappable] = field(default_factory=list)


def pod_uid_of(owner_id: str, source: str) -> str | None:
    """The pod behind an owner: itself for a pod, its target for an endpoint; None for a static server."""
    if source == "pod":
        return owner_id
    if source == "endpoint":
        return endpoint_parts(owner_id)[1]
    return None


class OwnerReader:
    def __init__(self, eni_annotation: str) -> None:
        self.eni_annotation = eni_annotation

    def pod(self, spec: Spec, pod: PodView, unmappable: list[Unmappable]) -> Seen | None:
        return pod_owner(spec, pod, self._mapper(spec, unmappable))

    def current(self, spec: Spec, namespace: str, view: ClusterView, pods: list[PodView]) -> Scan:
        """Every owner the spec picks now."""
        scan = self.endpoints(spec, namespace, view, pods)
        mapper = self._mapper(spec, scan.unmappable)
        for found in (pod_owner(spec, p, mapper) for p in pods):
            if found is not None:
                scan.owners[found.owner_id] = found
        scan.owners.update(static_owners(spec))
        return scan

    def endpoints(self, spec: Spec, namespace: str, view: ClusterView, pods: Iterable[PodView]) -> Scan:
        scan = Scan()
        if spec.service_name is not None:
            endpoints = view.endpoints(namespace, spec.service_name)
            by_name = {p.name: p for p in pods}
            scan.owners = endpoint_owners(spec, endpoints, by_name, self._mapper(spec, scan.unmappable))
        return scan

    def _mapper(self, spec: Spec, unmappable: list[Unmappable]) -> MapServer:
        def map_server(ip: str | None, annotations: Mapping[str, str], pod: PodView | None) -> Server | None:
            if spec.backend is None:
                return None
            try:
                return server_for(spec.backend, ip, annotations, self.eni_annotation)
            except UnmappablePod as exc:
                unmappable.append(Unmappable(pod.name if pod is not None else ip or "?", str(exc)))
                return None

        return map_server


def picks(spec: Spec, namespace: str, pod: PodView, view: ClusterView) -> bool:
    """Whether ``spec`` makes ``pod`` a member: by its selector, or as an endpoint of its Service."""
    if spec.backend is None:
        return False
    if spec.pod_selector is not None and spec.pod_selector.matches(pod.labels):
        return True
    if spec.service_name is not None:
        return any(ep.pod_uid == pod.uid for ep in view.endpoints(namespace, spec.service_name))
    return False
