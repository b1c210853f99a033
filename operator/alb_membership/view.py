"""What the operator can see of the cluster right now: pods, endpoints and ServerGroupMemberships.

The reconciler asks this, rather than keeping copies, so that every decision (and the last check before a
removal call) reads the freshest state the watches have. Two implementations: the operator's store (kept by its
watches, alb_membership.store) and plain lists read from the API server (anti-entropy, which must not trust the
watches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from alb_membership.membership import EndpointView, PodView


class ClusterView(Protocol):
    def pods(self, namespace: str) -> Iterable[PodView]: ...

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]: ...


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What views keep of a ServerGroupMembership: never its status, which can be large."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in ("namespace", "name", "uid", "deletionTimestamp") if k in meta},
        "spec": body.get("spec") or {},
    }


@dataclass
class ListedView:
    """A snapshot read from the API server."""

    pods_by_namespace: dict[str, list[PodView]] = field(default_factory=dict)
    endpoints_by_service: dict[tuple[str, str], list[EndpointView]] = field(default_factory=dict)

    def pods(self, namespace: str) -> Iterable[PodView]:
        return self.pods_by_namespace.get(namespace, [])

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]:
        return self.endpoints_by_service.get((namespace, service), [])
