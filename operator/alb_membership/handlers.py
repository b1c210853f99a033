"""kopf handlers: thin adapters from watch events to the Reconciler.

kopf runs the ServerGroupMembership's lifecycle (handlers, finalizer, progress). Pods and EndpointSlices are not
kopf's: the operator's own lean watches (cluster/store.py) hold them and call the reconciler, and the operator never
writes to them. A handler first makes sure the store holds the resource's namespace.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import kopf

from alb_membership.model.health import group_missing
from alb_membership.model.spec import GROUP, PLURAL, VERSION
from alb_membership.runtime import Runtime

registry = kopf.OperatorRegistry()
FINALIZER = f"{GROUP}/finalizer"
MAX_DELETION_RECHECK_SECONDS = 15.0


def deletion_recheck(retry: int) -> float:
    """Seconds until a deletion waiting for removals is looked at again: 1, 2, 4, 8, then every 15."""
    return min(MAX_DELETION_RECHECK_SECONDS, float(2 ** min(retry, 4)))


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
    _runtime(memo).start_work()


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
    runtime = _runtime(memo)
    await runtime.stop_work()
    # kopf gives every task started after it (the watches of pods and EndpointSlices) 5 s to end by itself before
    # it cancels them: end them now, so that SIGTERM ends the process at once.
    await runtime.stop_watching()


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
async def membership_resumed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # The operator (re)started or took over: whatever happened while none acted is caught up with, and counted
    # as leaks.
    runtime = _runtime(memo)
    await runtime.store.ensure(body["metadata"]["namespace"])
    runtime.reconciler.start(body, repair=True)


@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
async def membership_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    await runtime.store.ensure(body["metadata"]["namespace"])
    runtime.reconciler.start(body, repair=False)


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def membership_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    # Also runs for a resource whose deletion began before this operator started (kopf resumes no deleted
    # object): load() restores its pending removals from status and sends them again.
    runtime = _runtime(memo)
    await runtime.store.ensure(body["metadata"]["namespace"])
    if not runtime.reconciler.deleting(body):
        # Each look is a write of kopf's progress to the resource: at once at first (jobs take seconds), then
        # less often for a deletion that waits on the cloud for long.
        raise kopf.TemporaryError("waiting for the members' removal jobs to finish", delay=deletion_recheck(retry))
    state = runtime.reconciler.load(body)
    if group_missing(state):
        runtime.notices.post(
            [state],
            "Warning",
            "ServerGroupNotFound",
            f"{state.spec.server_group_id} does not exist; releasing the resource without removing anything",
        )
    runtime.reconciler.forget(body["metadata"]["uid"])
