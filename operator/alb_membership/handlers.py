"""kopf handlers: thin adapters from watch events to the Reconciler.

Pods and EndpointSlices are only watched (on.event and index): the operator never puts a finalizer or an
annotation on them. Indexes are complete before any resource handler runs, and the reconciler reads them
through an IndexView, so a resource that starts finds its pods and endpoints without listing anything.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import kopf

from alb_membership.health import group_missing
from alb_membership.membership import EndpointView, PodView, endpoints_of
from alb_membership.runtime import Runtime
from alb_membership.spec import GROUP, PLURAL, VERSION
from alb_membership.view import IndexView, slim

registry = kopf.OperatorRegistry()
SERVICE_LABEL = "kubernetes.io/service-name"
FINALIZER = f"{GROUP}/finalizer"


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


@kopf.on.startup(registry=registry)
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    pods_by_namespace: kopf.Index[str, PodView],
    endpoints_by_service: kopf.Index[Any, Any],
    sgm_by_namespace: kopf.Index[str, dict[str, Any]],
    **_: Any,
) -> None:
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
    # kopf keeps these index objects current in place for the operator's lifetime: the reconciler reads them
    # whenever it decides, including right before each removal call.
    _runtime(memo).start_work(IndexView(pods_by_namespace, endpoints_by_service, sgm_by_namespace))


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's built-in logins (a registry of our own starts without kopf's default ones): the pod's
    # ServiceAccount in a cluster, the kubeconfig elsewhere. kopf's in-cluster login always dials
    # kubernetes.default.svc:443; the pod's environment names the API server (what the operator's own client uses,
    # and what works without cluster DNS, e.g. with hostNetwork).
    info = kopf.login_with_service_account(**kwargs)
    if info is None:
        return kopf.login_with_kubeconfig(**kwargs)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port:
        info = dataclasses.replace(info, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    return info


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await _runtime(memo).stop_work()


@kopf.index(GROUP, VERSION, PLURAL, registry=registry)
async def sgm_by_namespace(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {namespace: slim(body)}


@kopf.index("v1", "pods", registry=registry)
async def pods_by_namespace(namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, PodView]:
    return {namespace: PodView.from_body(body, _runtime(memo).settings.eni_annotation)}


@kopf.index("discovery.k8s.io", "v1", "endpointslices", labels={SERVICE_LABEL: kopf.PRESENT}, registry=registry)
async def endpoints_by_service(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], list[EndpointView]]:
    return {(namespace, labels[SERVICE_LABEL]): endpoints_of(body)}


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
async def membership_resumed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # The operator (re)started: whatever happened while none ran is caught up with, and counted as leaks.
    _runtime(memo).reconciler.start(body, repair=True)


@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
async def membership_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _runtime(memo).reconciler.start(body, repair=False)


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def membership_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Also runs for a resource whose deletion began before this operator started (kopf resumes no deleted
    # object): load() restores its pending removals from status and sends them again.
    runtime = _runtime(memo)
    if not runtime.reconciler.deleting(body):
        raise kopf.TemporaryError("waiting for the members' removal jobs to finish", delay=1)
    state = runtime.reconciler.load(body)
    if group_missing(state):
        runtime.notices.post(
            [state],
            "Warning",
            "ServerGroupNotFound",
            f"{state.spec.server_group_id} does not exist; releasing the resource without removing anything",
        )
    runtime.reconciler.forget(body["metadata"]["uid"])


@kopf.on.event("v1", "pods", registry=registry)
async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    runtime.reconciler.pod_changed(PodView.from_body(body, runtime.settings.eni_annotation), deleted=type == "DELETED")


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels={SERVICE_LABEL: kopf.PRESENT}, registry=registry)
async def endpointslice_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body["metadata"]
    _runtime(memo).reconciler.endpoints_changed(meta.get("namespace", ""), meta.get("labels", {})[SERVICE_LABEL])
