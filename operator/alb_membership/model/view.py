"""What the operator can see of the cluster right now: pods, endpoints and ServerGroupMemberships.

The engine asks this, rather than keeping copies, so that every decision (and the last check before a call) reads
the freshest state the watches have. The cluster's store (cluster/store.py) implements it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from alb_membership.model.membership import EndpointView, PodView


class ClusterView(Protocol):
    """Besides whole namespaces and Services, the look-ups an event needs, each costing what it finds (the store
    indexes them): so that one pod's or one endpoint's change costs the same in a Service of 10 or of 5,000."""

    def pods(self, namespace: str) -> Iterable[PodView]: ...

    def pod(self, namespace: str, uid: str) -> PodView | None: ...

    def pod_named(self, namespace: str, name: str) -> PodView | None: ...

    def pods_at(self, namespace: str, address: str) -> Iterable[PodView]:
        """Pods whose IP, ECI instance id or ENI id is ``address``: the candidates for a server's ServerId."""
        ...

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]: ...

    def endpoints_of(self, namespace: str, service: str, key: str) -> list[EndpointView]:
        """The Service's endpoints of one owner: ``key`` is a pod's UID, or the address of an endpoint without a
        pod (membership.endpoint_key), in every slice, in the slices' order."""
        ...

    def endpoints_at(self, namespace: str, service: str, address: str) -> list[EndpointView]: ...

    def endpoints_of_pod_named(self, namespace: str, service: str, name: str) -> list[EndpointView]: ...


class LiveView(ClusterView, Protocol):
    def memberships(self) -> Iterable[Mapping[str, Any]]:
        """Every ServerGroupMembership: metadata (namespace, name, uid, deletionTimestamp) and spec."""
        ...
