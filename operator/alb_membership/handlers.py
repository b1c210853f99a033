"""kopf handlers: thin adapters from watch events to the Reconciler.

Pods and EndpointSlices are only watched (on.event and index): the operator never puts a finalizer or an
annotation on them. Indexes are complete before any handler runs, so a pod event finds its resources, and a
resource that starts finds its pods and endpoints, without listing anything.
"""

from __future__ import annotations

from typing import Any

import kopf

from alb_membership.membership import EndpointView, PodView, endpoints_of
from alb_membership.runtime import Runtime
from alb_membership.spec import GROUP, PLURAL, VERSION

registry = kopf.OperatorRegistry()
SERVICE_LABEL = "kubernetes.io/service-name"
FINALIZER = f"{GROUP}/finalizer"


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.enabled = False  # the operator posts its own, fewer and clearer Events
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    # No watching of CRDs and namespaces: least privilege (no cluster-wide list/watch on either); the cost is
    # that --namespace takes exact names, not globs.
    settings.scanning.disabled = True


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's built-in logins (a registry of our own starts without kopf's default ones): the pod's
    # ServiceAccount in a cluster, the kubeconfig elsewhere.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await _runtime(memo).stop_work()


@kopf.index(GROUP, VERSION, PLURAL, registry=registry)
async def sgm_by_namespace(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {namespace: dict(body)}


@kopf.index("v1", "pods", registry=registry)
async def pods_by_namespace(namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, PodView]:
    return {namespace: PodView.from_body(body, _runtime(memo).settings.eni_annotation)}


@kopf.index("discovery.k8s.io", "v1", "endpointslices", labels={SERVICE_LABEL: kopf.PRESENT}, registry=registry)
async def endpoints_by_service(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], list[EndpointView]]:
    return {(namespace, labels[SERVICE_LABEL]): endpoints_of(body)}


def _pods(body: kopf.Body, pods_by_namespace: kopf.Index[str, PodView]) -> list[PodView]:
    return list(pods_by_namespace.get(body["metadata"]["namespace"], []))


def _service_endpoints(body: kopf.Body, endpoints_by_service: kopf.Index[Any, Any]) -> list[EndpointView] | None:
    name = (body.get("spec", {}).get("serviceRef") or {}).get("name")
    if not name:
        return None
    return [ep for views in endpoints_by_service.get((body["metadata"]["namespace"], name), []) for ep in views]


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
async def membership_started(
    body: kopf.Body,
    memo: kopf.Memo,
    pods_by_namespace: kopf.Index[str, PodView],
    endpoints_by_service: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    _runtime(memo).reconciler.start(
        body, _pods(body, pods_by_namespace), _service_endpoints(body, endpoints_by_service)
    )


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
async def membership_changed(
    body: kopf.Body,
    memo: kopf.Memo,
    pods_by_namespace: kopf.Index[str, PodView],
    endpoints_by_service: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    _runtime(memo).reconciler.spec_changed(
        body, _pods(body, pods_by_namespace), _service_endpoints(body, endpoints_by_service)
    )


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def membership_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    if not runtime.reconciler.deleting(body):
        raise kopf.TemporaryError("waiting for the members' removal jobs to finish", delay=1)
    state = runtime.reconciler.state_for(body)
    degraded = state.conditions.get("Degraded")
    if degraded is not None and degraded.reason == "ResourceNotFoundServerGroup":
        await runtime.kube.event(
            state.ref,
            "Warning",
            "ServerGroupNotFound",
            f"{state.spec.server_group_id} does not exist; releasing the resource without removing anything",
        )
    runtime.reconciler.forget(body["metadata"]["uid"])


@kopf.on.event("v1", "pods", registry=registry)
async def pod_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, sgm_by_namespace: kopf.Index[str, dict[str, Any]], **_: Any
) -> None:
    memberships: list[dict[str, Any]] = list(sgm_by_namespace.get(body["metadata"].get("namespace", ""), []))
    if not memberships:
        return
    runtime = _runtime(memo)
    pod = PodView.from_body(body, runtime.settings.eni_annotation)
    for membership in memberships:
        if (
            membership["metadata"].get("deletionTimestamp")
            and membership["metadata"]["uid"] not in runtime.reconciler.states
        ):
            continue
        state = runtime.reconciler.state_for(membership)
        runtime.reconciler.pod_changed(state, pod, deleted=type == "DELETED")


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels={SERVICE_LABEL: kopf.PRESENT}, registry=registry)
async def endpointslice_event(
    body: kopf.Body,
    memo: kopf.Memo,
    sgm_by_namespace: kopf.Index[str, dict[str, Any]],
    endpoints_by_service: kopf.Index[Any, Any],
    pods_by_namespace: kopf.Index[str, PodView],
    **_: Any,
) -> None:
    namespace = body["metadata"].get("namespace", "")
    service = body["metadata"].get("labels", {}).get(SERVICE_LABEL)
    memberships = [
        m
        for m in sgm_by_namespace.get(namespace, [])
        if (m.get("spec", {}).get("serviceRef") or {}).get("name") == service
    ]
    if not memberships:
        return
    runtime = _runtime(memo)
    endpoints = [ep for views in endpoints_by_service.get((namespace, service), []) for ep in views]
    pods = {p.name: p for p in pods_by_namespace.get(namespace, [])}
    for membership in memberships:
        state = runtime.reconciler.state_for(membership)
        runtime.reconciler.endpoints_changed(state, endpoints, pods)
