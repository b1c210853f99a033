"""Stand-ins for unit tests of the operator's plain code: a cluster view over lists, a Kubernetes writer that
records, and a reconciler whose pipelines only record what they were given."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from alb_membership.alb.models import Server
from alb_membership.cluster.kube import Kube
from alb_membership.cluster.notices import Notices
from alb_membership.engine.pipeline import GroupPipeline, Services
from alb_membership.engine.reconciler import Reconciler, ReconcilerSettings
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import GroupKey
from alb_membership.model.membership import EndpointView, PodView, endpoint_key
from alb_membership.model.spec import Ref

ENI = "k8s.aliyun.com/eni-id"


class RecordingKube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []

    async def patch_status(self, ref: Ref, status: dict[str, Any]) -> bool:
        self.patches.append((ref.uid, status))
        return True

    async def event(self, ref: Ref, kind: str, reason: str, message: str) -> None:
        self.events.append((ref.name, reason, message))


class View:
    def __init__(self) -> None:
        self.pod_list: list[PodView] = []
        self.slices: dict[tuple[str, str], list[EndpointView]] = {}
        self.bodies: list[dict[str, Any]] = []

    def pods(self, namespace: str) -> Iterable[PodView]:
        return [p for p in self.pod_list if p.namespace == namespace]

    def pod(self, namespace: str, uid: str) -> PodView | None:
        return next((p for p in self.pods(namespace) if p.uid == uid), None)

    def pod_named(self, namespace: str, name: str) -> PodView | None:
        return next((p for p in self.pods(namespace) if p.name == name), None)

    def pods_at(self, namespace: str, address: str) -> Iterable[PodView]:
        return [p for p in self.pods(namespace) if address == p.ip or address in p.annotations.values()]

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]:
        return self.slices.get((namespace, service), [])

    def endpoints_of(self, namespace: str, service: str, key: str) -> list[EndpointView]:
        return [ep for ep in self.endpoints(namespace, service) if endpoint_key(ep) == key]

    def endpoints_at(self, namespace: str, service: str, address: str) -> list[EndpointView]:
        return [ep for ep in self.endpoints(namespace, service) if ep.address == address]

    def endpoints_of_pod_named(self, namespace: str, service: str, name: str) -> list[EndpointView]:
        return [ep for ep in self.endpoints(namespace, service) if ep.pod_name == name]

    def memberships(self) -> Iterable[Mapping[str, Any]]:
        return self.bodies

    def put(self, pod: PodView) -> None:
        self.pod_list = [p for p in self.pod_list if p.uid != pod.uid] + [pod]

    def drop(self, uid: str) -> None:
        self.pod_list = [p for p in self.pod_list if p.uid != uid]


class RecordingPipeline:
    def __init__(self) -> None:
        self.sent: list[Server] = []

    def enqueue(self, servers: Iterable[Server]) -> None:
        self.sent += list(servers)


class RecordingReconciler(Reconciler):
    """The real reconciler; its pipelines record what they would send."""

    def __init__(self, view: View, kube: RecordingKube, endpoint_grace: float = 0.2) -> None:
        super().__init__(
            ReconcilerSettings("cn-hangzhou", ENI, endpoint_grace),
            lambda _region: cast(Services, None),
            cast(Kube, kube),
            Notices(cast(Kube, kube)),
            Metrics(),
        )
        self.view = view
        self.recorded: dict[GroupKey, RecordingPipeline] = {}

    def pipeline(self, key: GroupKey) -> GroupPipeline:
        return cast(GroupPipeline, self.recorded.setdefault(key, RecordingPipeline()))

    def sent(self) -> list[str]:
        return [s.compact for p in self.recorded.values() for s in p.sent]


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    labels: dict[str, str] | None = None,
    deleting: bool = False,
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
    uid: str | None = None,
    namespace: str = "shop",
    ready: bool = False,
    containers_ready: bool | None = None,
    gates: dict[str, str | None] | None = None,
) -> PodView:
    """``gates``: readiness gate condition type -> its status now (None: no condition yet)."""
    meta: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "uid": uid or f"uid-{name}",
        "labels": labels if labels is not None else {"app": "web"},
        "annotations": annotations or {},
    }
    if deleting:
        meta.update(deletionTimestamp="2026-11-28T10:00:30Z", deletionGracePeriodSeconds=30)
    conditions = [
        {"type": "Ready", "status": str(ready)},
        {"type": "ContainersReady", "status": str(ready if containers_ready is None else containers_ready)},
    ]
    conditions += [{"type": t, "status": v, "reason": "Test"} for t, v in (gates or {}).items() if v is not None]
    body = {
        "metadata": meta,
        "spec": {"readinessGates": [{"conditionType": t} for t in gates or {}]},
        "status": {"podIP": ip, "phase": phase, "conditions": conditions},
    }
    return PodView.from_body(body, ENI)


def resource(uid: str = "sgm-uid-1", namespace: str = "shop", name: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": uid, "generation": 1},
        "spec": {"serverGroupId": "sgp-test00000001", **spec},
    }


def selected(**extra: Any) -> dict[str, Any]:
    return resource(
        **{"podSelector": {"matchLabels": {"app": "web"}}, "backend": {"serverType": "Ip", "port": 8080}, **extra}
    )
