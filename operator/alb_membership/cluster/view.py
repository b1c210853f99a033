"""What the operator can see of the cluster right now: pods, endpoints and ServerGroupMemberships.

The reconciler asks this, rather than keeping copies, so that every decision (and the last check before a
removal call) reads the freshest state the watches have (alb_membership.cluster.store).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from alb_membership.model.membership import EndpointView, PodView


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
