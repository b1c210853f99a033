"""What the operator can see of the cluster right now: pods, endpoints and ServerGroupMemberships.

The reconciler asks this, rather than keeping copies, so that every decision (and the last check before a
removal call) reads the freshest state the watches have. Two implementations: kopf's indexes (live, kept by the
watches) and plain lists read from the API server (anti-entropy, which must not trust the watches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from alb_membership.membership import EndpointView, PodView


class ClusterView(Protocol):
    def pods(self, namespace: str) -> Iterable[PodView]: ...

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]: ...

    def memberships(self) -> Iterable[Mapping[str, Any]]:
        """Every ServerGroupMembership: metadata (namespace, name, uid, deletionTimestamp) and spec."""
        ...


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What views keep of a ServerGroupMembership: never its status, which can be large."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in ("namespace", "name", "uid", "deletionTimestamp") if k in meta},
        "spec": body.get("spec") or {},
    }


class IndexView:
    """Over kopf's indexes, which kopf keeps current in place (the same objects for the operator's lifetime)."""

    def __init__(self, pods_by_namespace: Any, endpoints_by_service: Any, sgm_by_namespace: Any) -> None:
        self._pods = pods_by_namespace
        self._endpoints = endpoints_by_service
        self._sgms = sgm_by_namespace

    def pods(self, namespace: str) -> Iterable[PodView]:
        return list(self._pods.get(namespace, []))

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]:
        return [ep for views in self._endpoints.get((namespace, service), []) for ep in views]

    def memberships(self) -> Iterable[Mapping[str, Any]]:
        return [body for namespace in list(self._sgms) for body in self._sgms.get(namespace, [])]


@dataclass
class ListedView:
    """A snapshot read from the API server."""

    pods_by_namespace: dict[str, list[PodView]] = field(default_factory=dict)
    endpoints_by_service: dict[tuple[str, str], list[EndpointView]] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def pods(self, namespace: str) -> Iterable[PodView]:
        return self.pods_by_namespace.get(namespace, [])

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]:
        return self.endpoints_by_service.get((namespace, service), [])

    def memberships(self) -> Iterable[Mapping[str, Any]]:
        return self.bodies
