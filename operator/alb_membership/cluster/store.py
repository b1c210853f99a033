"""The operator's own view of the cluster: ServerGroupMemberships, and the pods and EndpointSlices of the
namespaces that have at least one, kept current by lean watches (alb_membership.cluster.informer).

It runs from process start on every replica, leader or not: a standby's view is as current as the leader's, so a
replica that takes over acts on the first event, not after listing the cluster. Pods of namespaces without a
ServerGroupMembership cost one JSON parse per event and nothing kept.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from kubernetes_asyncio import client

from alb_membership.cluster.index import EndpointIndex, PodIndex
from alb_membership.cluster.informer import Informer, Source
from alb_membership.model.membership import EndpointView, PodView, endpoint_key, endpoints_of
from alb_membership.model.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)
SERVICE_LABEL = "kubernetes.io/service-name"


class SliceRecord:
    """An EndpointSlice as the operator needs it: its Service and endpoints."""

    __slots__ = ("endpoints", "name", "namespace", "service", "uid")

    def __init__(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        self.uid: str = meta.get("uid", "")
        self.namespace: str = meta.get("namespace", "")
        self.name: str = meta.get("name", "")
        self.service: str = (meta.get("labels") or {}).get(SERVICE_LABEL, "")
        self.endpoints: list[EndpointView] = endpoints_of(body)


FILL_RETRY_SECONDS = (1.0, 30.0)  # first and longest pause between tries of a namespace's list
ENSURE_SECONDS = 60.0


class ClusterStore:
    def __init__(
        self,
        api: client.ApiClient,
        namespaces: tuple[str, ...],
        eni_annotation: str,
        on_pod: Callable[[PodView | None, PodView | None], None],
        on_slice: Callable[[str, str, frozenset[str]], None],
        on_relist: Callable[[], None],
    ) -> None:
        """``on_slice(namespace, service, keys)``: the endpoints of those owner keys (pod UID, or address for an
        endpoint without a pod) changed in one of the Service's EndpointSlices."""
        core, discovery, custom = client.CoreV1Api(api), client.DiscoveryV1Api(api), client.CustomObjectsApi(api)
        self._namespaces = namespaces
        # Namespaces whose pods and EndpointSlices are held: those with a resource, and those a handler asked for
        # (ensure) before the watch of resources showed theirs.
        self._interest: set[str] = set()
        self._asked: set[str] = set()
        self._complete: set[str] = set()  # held namespaces whose objects have all been read (list or fill)
        self._fills: dict[str, asyncio.Task[None]] = {}
        self._list_pods = core.list_namespaced_pod
        self._list_slices = discovery.list_namespaced_endpoint_slice
        self._on_slice = on_slice
        self._pods = PodIndex()
        self._endpoints = EndpointIndex()
        if namespaces:  # one watch per namespace, as the Roles allow
            sgm_calls: list[Callable[..., Awaitable[Any]]] = [
                functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL) for ns in namespaces
            ]
            pod_calls: list[Callable[..., Awaitable[Any]]] = [
                functools.partial(core.list_namespaced_pod, ns) for ns in namespaces
            ]
            slice_calls: list[Callable[..., Awaitable[Any]]] = [
                functools.partial(discovery.list_namespaced_endpoint_slice, ns) for ns in namespaces
            ]
        else:
            sgm_calls = [functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)]
            pod_calls = [core.list_pod_for_all_namespaces]
            slice_calls = [discovery.list_endpoint_slice_for_all_namespaces]

        def uid(body: Mapping[str, Any]) -> str:
            return str(body["metadata"]["uid"])

        self.sgm_watches: list[Informer[dict[str, Any]]] = [
            Informer(Source(call, describe="ServerGroupMemberships"), slim, uid, lambda _ns: True, self._sgm_changed)
            for call in sgm_calls
        ]
        pod_view = functools.partial(PodView.from_body, eni_annotation=eni_annotation)
        self.pod_watches: list[Informer[PodView]] = [
            Informer(
                Source(call, describe="pods"),
                pod_view,
                lambda p: p.uid,
                self.interesting,
                on_pod,
                on_relist,
                self._pods.put,
            )
            for call in pod_calls
        ]
        self.slice_watches: list[Informer[SliceRecord]] = [
            Informer(
                Source(call, label_selector=SERVICE_LABEL, describe="EndpointSlices"),
                SliceRecord,
                lambda r: r.uid,
                self.interesting,
                self._slice_changed,
                on_relist,
                self._endpoints.put,
            )
            for call in slice_calls
        ]
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """ServerGroupMemberships first (they say which namespaces matter), then pods and EndpointSlices."""
        tasks = [asyncio.create_task(i.run(), name="watch-sgm") for i in self.sgm_watches]
        try:
            await asyncio.gather(*(i.synced.wait() for i in self.sgm_watches))
            self._recount()
            listed = set(self._interest)  # what the first lists of pods and EndpointSlices cover
            others: list[Informer[Any]] = [*self.pod_watches, *self.slice_watches]
            tasks += [asyncio.create_task(i.run(), name="watch") for i in others]
            await asyncio.gather(*(i.synced.wait() for i in others))
            self._complete |= listed & self._interest
            self.synced.set()
            for namespace in self._interest - self._complete:  # got a resource while the first lists ran
                self._start_fill(namespace)
            log.info(
                "watching %d pod(s) in %d namespace(s) with ServerGroupMemberships",
                self.pod_count(),
                len(self._interest),
            )
            await asyncio.gather(*tasks)
        finally:
            fills = list(self._fills.values())
            for task in [*tasks, *fills]:
                task.cancel()
            await asyncio.gather(*tasks, *fills, return_exceptions=True)

    # -- interest -------------------------------------------------------------------------------------------------

    def interesting(self, namespace: str) -> bool:
        return namespace in self._interest

    async def ensure(self, namespace: str) -> None:
        """Once this returns, the namespace's pods and EndpointSlices are held (a ServerGroupMembership there may
        be newer than what the watch of ServerGroupMemberships has shown yet). Raises when they cannot be read
        (a kopf handler is retried)."""
        await self.synced.wait()
        if not any(body["metadata"]["namespace"] == namespace for body in self.memberships()):
            self._asked.add(namespace)  # until the watch shows its resource, which then keeps it interesting
        self._interest.add(namespace)
        if namespace not in self._complete:
            fill = self._fills.get(namespace) or self._start_fill(namespace, retry=False)
            await asyncio.wait({fill}, timeout=ENSURE_SECONDS)  # a fill that keeps retrying goes on by itself
            if namespace not in self._complete:
                raise RuntimeError(f"the pods of namespace {namespace} could not be read; trying again")

    def _recount(self) -> None:
        """Which namespaces have a resource, from the resources themselves (no counting of events twice)."""
        having = {body["metadata"]["namespace"] for body in self.memberships()}
        self._asked -= having  # the watch has shown them now: their resources keep them interesting
        wanted = having | self._asked
        for namespace in wanted - self._interest:
            self._interest.add(namespace)
            if self.synced.is_set():
                self._start_fill(namespace)
        for namespace in self._interest - wanted:
            self._interest.discard(namespace)
            self._complete.discard(namespace)
            fill = self._fills.pop(namespace, None)
            if fill is not None:
                fill.cancel()
            for watch in self.pod_watches:
                watch.forget_namespace(namespace)
            for sliced in self.slice_watches:
                sliced.forget_namespace(namespace)

    def _sgm_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if old is None or new is None:  # a resource came or went
            self._recount()

    def _start_fill(self, namespace: str, retry: bool = True) -> asyncio.Task[None]:
        index = self._namespaces.index(namespace) if namespace in self._namespaces else 0
        pods, slices = self.pod_watches[index], self.slice_watches[index]

        async def fill() -> None:
            pause = FILL_RETRY_SECONDS[0]
            try:
                while namespace in self._interest:
                    try:
                        await pods.fill(namespace, functools.partial(self._list_pods, namespace))
                        await slices.fill(namespace, functools.partial(self._list_slices, namespace))
                    except Exception as exc:
                        log.warning("could not read namespace %s (%s: %s)", namespace, type(exc).__name__, exc)
                        if not retry:
                            return
                        await asyncio.sleep(pause)
                        pause = min(FILL_RETRY_SECONDS[1], pause * 2)
                        continue
                    if namespace in self._interest:
                        self._complete.add(namespace)
                    return
            finally:
                if self._fills.get(namespace) is task:
                    del self._fills[namespace]

        task = asyncio.create_task(fill(), name=f"fill-{namespace}")
        self._fills[namespace] = task
        return task

    def _slice_changed(self, old: SliceRecord | None, new: SliceRecord | None) -> None:
        """Tells which endpoints changed: those of the owner keys whose endpoints differ between the two versions
        (all of them when a slice came, went or moved to another Service)."""
        if old is not None and new is not None and old.service == new.service:
            if new.service:
                keys = self._endpoints.changed(old, new)
                if keys:
                    self._on_slice(new.namespace, new.service, keys)
            return
        for record in (old, new):
            if record is not None and record.service and record.endpoints:
                self._on_slice(record.namespace, record.service, frozenset(map(endpoint_key, record.endpoints)))

    # -- the view (model.view.LiveView) ------------------------------------------------------------------------

    def pods(self, namespace: str) -> Iterable[PodView]:
        return [p for informer in self.pod_watches for p in informer.records.get(namespace, {}).values()]

    def pod(self, namespace: str, uid: str) -> PodView | None:
        return self._pods.pod(namespace, uid)

    def pod_named(self, namespace: str, name: str) -> PodView | None:
        for informer in self.pod_watches:
            found = informer.records.get(namespace, {}).get(name)
            if found is not None:
                return found
        return None

    def pods_at(self, namespace: str, address: str) -> list[PodView]:
        return self._pods.at(namespace, address)

    def endpoints(self, namespace: str, service: str) -> list[EndpointView]:
        found = self._endpoints.service(namespace, service)
        return found.endpoints() if found is not None else []

    def endpoints_of(self, namespace: str, service: str, key: str) -> list[EndpointView]:
        found = self._endpoints.service(namespace, service)
        return found.look_up(found.by_key, key) if found is not None else []

    def endpoints_at(self, namespace: str, service: str, address: str) -> list[EndpointView]:
        found = self._endpoints.service(namespace, service)
        return found.look_up(found.by_address, address) if found is not None else []

    def endpoints_of_pod_named(self, namespace: str, service: str, name: str) -> list[EndpointView]:
        found = self._endpoints.service(namespace, service)
        return found.look_up(found.by_pod_name, name) if found is not None else []

    def memberships(self) -> Iterable[Mapping[str, Any]]:
        return [body for i in self.sgm_watches for named in i.records.values() for body in named.values()]

    def event_count(self) -> int:
        watches: list[Informer[Any]] = [*self.sgm_watches, *self.pod_watches, *self.slice_watches]
        return sum(i.events for i in watches)

    def pod_count(self) -> int:
        return sum(i.count() for i in self.pod_watches)


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the store keeps of a ServerGroupMembership: never its status, which can be large."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in ("namespace", "name", "uid", "deletionTimestamp") if k in meta},
        "spec": body.get("spec") or {},
    }
