"""The operator's own writes to Kubernetes (status and Events) outside kopf's handler cycle, with
kubernetes_asyncio so that nothing blocks the event loop."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from alb_membership.model.budgets import Budget
from alb_membership.model.membership import PodView
from alb_membership.model.spec import GROUP, PLURAL, VERSION, Ref

log = logging.getLogger(__name__)
COMPONENT = "alb-membership-operator"


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._policy = client.PolicyV1Api(api)
        self._host = os.environ.get("POD_NAME") or os.uname().nodename

    @classmethod
    async def connect(cls) -> Kube:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return cls(client.ApiClient())
        configuration = client.Configuration()
        await config.load_kube_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    async def patch_status(self, ref: Ref, status: dict[str, Any]) -> bool:
        """Merge-patches the status subresource; False when the resource is gone."""
        try:
            await self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                {"status": status},
                # Accepted at run time (the *_with_http_info layer reads it) though missing from the stub.
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def set_pod_condition(self, namespace: str, name: str, uid: str, condition: dict[str, Any]) -> bool:
        """Sets one condition of a pod's status (a strategic merge by type: the kubelet's conditions stay); the
        pod's UID is a precondition, so a newer pod of the same name is never touched. False when that pod is gone."""
        body = {"metadata": {"uid": uid}, "status": {"conditions": [condition]}}
        try:
            await self._core.patch_namespaced_pod_status(
                name,
                namespace,
                body,
                _content_type="application/strategic-merge-patch+json",  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def pod_live(self, namespace: str, name: str, uid: str) -> bool:
        """Whether the pod (this UID) exists without a deletion, as the API server shows it now (a quorum read)."""
        try:
            resp: Any = await self._core.read_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        meta = json.loads(await resp.read()).get("metadata") or {}
        return bool(meta.get("uid") == uid and not meta.get("deletionTimestamp"))

    async def list_pods(self, namespace: str, eni_annotation: str) -> list[PodView]:
        """Paged, as raw JSON: building the client's model objects for thousands of pods costs far more."""
        out: list[PodView] = []
        token: str | None = None
        while True:
            more: dict[str, Any] = {"_continue": token} if token else {}
            resp: Any = await self._core.list_namespaced_pod(namespace, limit=500, _preload_content=False, **more)
            page = json.loads(await resp.read())
            out += [PodView.from_body(p, eni_annotation) for p in page["items"]]
            token = page["metadata"].get("continue")
            if not token:
                return out

    async def budgets(self, namespace: str) -> list[Budget]:
        """The namespace's PodDisruptionBudgets as read now: what the Eviction API will judge by, after admission
        (model/budgets.py picks a pod's)."""
        resp: Any = await self._policy.list_namespaced_pod_disruption_budget(namespace, _preload_content=False)
        return [Budget.from_body(budget) for budget in json.loads(await resp.read())["items"]]

    async def event(self, ref: Ref, kind: str, reason: str, message: str) -> None:
        """Posts a core/v1 Event on the resource. Failures are logged, never raised: an Event is a courtesy."""
        now = dt.datetime.now(dt.UTC)
        body = {
            "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:12]}", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ServerGroupMembership",
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
            "source": {"component": COMPONENT, "host": self._host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host,
        }
        try:
            await self._core.create_namespaced_event(ref.namespace, body)  # type: ignore[arg-type]
        except Exception as exc:  # an unreachable API server must not stop a removal
            log.warning("could not post event %s on %s: %s", reason, ref, exc)
