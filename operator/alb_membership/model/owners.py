"""Who a resource's spec picks in the cluster now: pods, endpoints, static servers. Pure: reads a view, returns
values. A member that cannot be mapped to an ALB server (an Eci/Eni pod without its annotation) is returned too,
so that whoever acts on the result can tell a person, once."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from alb_membership.alb.models import Server
from alb_membership.model.membership import (
    MapServer,
    PodView,
    Seen,
    UnmappablePod,
    endpoint_key,
    endpoint_owner_id,
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


def pod_owner_ids(spec: Spec, pod_uid: str) -> list[str]:
    """The owner ids the pod has under ``spec``, if it is picked: itself, and its endpoint of the spec's Service."""
    ids = [pod_uid]
    if spec.service_name:
        ids.append(endpoint_owner_id(spec.service_name, pod_uid))
    return ids


class OwnerReader:
    def __init__(self, eni_annotation: str) -> None:
        self.eni_annotation = eni_annotation

    def pod(self, spec: Spec, pod: PodView, unmappable: list[Unmappable]) -> Seen | None:
        return pod_owner(spec, pod, self._mapper(spec, unmappable))

    def current(self, spec: Spec, namespace: str, view: ClusterView) -> Scan:
        """Every owner the spec picks now."""
        scan = self.endpoints(spec, namespace, view)
        mapper = self._mapper(spec, scan.unmappable)
        if spec.pod_selector is not None:
            for found in (pod_owner(spec, p, mapper) for p in view.pods(namespace)):
                if found is not None:
                    scan.owners[found.owner_id] = found
        scan.owners.update(static_owners(spec))
        return scan

    def endpoints(self, spec: Spec, namespace: str, view: ClusterView, keys: Iterable[str] | None = None) -> Scan:
        """The owners of the spec's Service: all of them, or those of the owner ``keys`` only (pod UIDs, or
        addresses of endpoints without a pod; membership.endpoint_key), at the cost of what those hold."""
        scan = Scan()
        service = spec.service_name
        if service is not None:
            if keys is None:
                endpoints = view.endpoints(namespace, service)
            else:
                endpoints = [ep for key in keys for ep in view.endpoints_of(namespace, service, key)]
            scan.owners = endpoint_owners(
                spec, endpoints, functools.partial(view.pod_named, namespace), self._mapper(spec, scan.unmappable)
            )
        return scan

    def holding(self, spec: Spec, namespace: str, view: ClusterView, server: Server) -> list[Seen]:
        """The live owners the spec picks now whose server is ``server`` (static servers aside: see
        static_owners), found by the server's ids (the store's indexes), not by a scan of the namespace."""
        out: list[Seen] = []
        if spec.backend is None or spec.backend.port != server.port:
            return out
        ignored: list[Unmappable] = []
        mapper = self._mapper(spec, ignored)
        candidates = list(view.pods_at(namespace, server.server_id))
        if spec.pod_selector is not None:
            for pod in candidates:
                found = pod_owner(spec, pod, mapper)
                if found is not None and not found.leaving and found.server == server:
                    out.append(found)
        service = spec.service_name
        if service is not None:
            keys: set[str] = set()
            for address in {server.server_id, server.server_ip} - {None}:
                keys.update(map(endpoint_key, view.endpoints_at(namespace, service, str(address))))
            for pod in candidates:
                keys.update(map(endpoint_key, view.endpoints_of_pod_named(namespace, service, pod.name)))
            for found in self.endpoints(spec, namespace, view, keys).owners.values():
                if not found.leaving and found.server == server:
                    out.append(found)
        return out

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
        return any(ep.pod_uid == pod.uid for ep in view.endpoints_of(namespace, spec.service_name, pod.uid))
    return False
