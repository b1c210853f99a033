"""What the operator can see of the cluster right now: pods, endpoints and ServerGroupMemberships.

The engine asks this, rather than keeping copies, so that every decision (and the last check before a call) reads
the freshest state the watches have. The cluster's store (cluster/store.py) implements it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from alb_membership.model.membership import EndpointView, PodView


class ClusterView(Protocol):
    def pods(self, namespace: str) -> Iterable[PodView]: ...

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]: ...


class LiveView(ClusterView, Protocol):
    def memberships(self) -> Iterable[Mapping[str, Any]]:
        """Every ServerGroupMembership: metadata (namespace, name, uid, deletionTimestamp) and spec."""
        ...
