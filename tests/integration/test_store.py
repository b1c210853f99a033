"""The operator's own watches (alb_membership.cluster.store) on the real API server: only namespaces with a
ServerGroupMembership cost records, a namespace that gains one is filled, a relist turns what it missed into
events, deletions included, and the indexes (pods by UID and address, endpoints by Service) follow it all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import kubernetes
import pytest
from kubernetes_asyncio import client, config

from alb_membership.cluster.store import ClusterStore
from alb_membership.model.membership import PodView
from tests.support.cluster import Cluster
from tests.support.scenario import apply, deployment, pod_ips, sgm
from tests.support.workloads import bare_pod, endpoint, endpoint_slice, service

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def other_namespace(api_client: kubernetes.client.ApiClient, namespace: str) -> Any:
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"{namespace[:50]}-b"
    core.create_namespace({"metadata": {"name": name, "labels": {"albm-test": "true"}}})
    yield name
    core.delete_namespace(name)


class Changes:
    def __init__(self) -> None:
        self.pods: list[tuple[PodView | None, PodView | None]] = []
        self.slices: list[tuple[str, str, frozenset[str]]] = []
        self.relists = 0

    def on_pod(self, old: PodView | None, new: PodView | None) -> None:
        self.pods.append((old, new))

    def on_slice(self, namespace: str, service: str, keys: frozenset[str]) -> None:
        self.slices.append((namespace, service, keys))

    def on_relist(self) -> None:
        self.relists += 1


async def until(check: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_only_namespaces_with_a_resource_cost_records(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    api: client.ApiClient,
    namespace: str,
    other_namespace: str,
    crd: None,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    for ns in (namespace, other_namespace):
        apply(cluster, ns, deployment("web", 3))
    apply(
        cluster,
        namespace,
        sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}),
    )
    await asyncio.to_thread(pod_ips, core, namespace, "web", 3)
    await asyncio.to_thread(pod_ips, core, other_namespace, "web", 3)
    changes = Changes()
    store = ClusterStore(api, (), "k8s.aliyun.com/eni-id", changes.on_pod, changes.on_slice, changes.on_relist)
    task = asyncio.create_task(store.run())
    try:
        await asyncio.wait_for(store.synced.wait(), 60)
        assert len(list(store.pods(namespace))) == 3
        assert list(store.pods(other_namespace)) == [], "no resource in that namespace: no records"
        assert other_namespace not in store.pod_watches[0].records

        # Events of namespaces without a resource are parsed and dropped.
        cluster.kubectl("scale", "deployment/web", "--replicas=5", "-n", other_namespace)
        cluster.kubectl("scale", "deployment/web", "--replicas=4", "-n", namespace)
        await until(lambda: len(list(store.pods(namespace))) == 4, "the fourth pod held")
        assert list(store.pods(other_namespace)) == []
        assert {(new or old).namespace for old, new in changes.pods} == {namespace}  # type: ignore[union-attr]

        # A resource in the other namespace: its pods are read, and watched from then on.
        apply(
            cluster,
            other_namespace,
            sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}),
        )
        await until(lambda: store.interesting(other_namespace), "the new resource seen")
        await store.ensure(other_namespace)
        await until(lambda: len(list(store.pods(other_namespace))) == 5, "the other namespace's pods held")

        # Its resource gone, its records go too.
        cluster.kubectl("delete", "sgm", "web", "-n", other_namespace, "--wait=false")
        cluster.kubectl(
            "patch",
            "sgm",
            "web",
            "-n",
            other_namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        await until(lambda: not store.interesting(other_namespace), "the namespace dropped")
        assert list(store.pods(other_namespace)) == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_relist_turns_what_the_watch_missed_into_events(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, api: client.ApiClient, namespace: str, crd: None
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    apply(cluster, namespace, deployment("web", 2))
    apply(
        cluster,
        namespace,
        sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}),
    )
    names = await asyncio.to_thread(pod_ips, core, namespace, "web", 2)
    changes = Changes()
    store = ClusterStore(
        api, (namespace,), "k8s.aliyun.com/eni-id", changes.on_pod, changes.on_slice, changes.on_relist
    )
    task = asyncio.create_task(store.run())
    await asyncio.wait_for(store.synced.wait(), 60)
    task.cancel()  # the watches stop: what happens now, nobody sees
    await asyncio.gather(task, return_exceptions=True)
    victim = sorted(names)[0]
    core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)
    await until(
        lambda: victim not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items}, "the pod gone"
    )
    changes.pods.clear()
    await store.pod_watches[0]._list()  # what a 410 Gone leads to
    gone = [old.name for old, new in changes.pods if new is None and old is not None]
    assert gone == [victim] and changes.relists == 1
    assert victim not in {p.name for p in store.pods(namespace)}


async def test_the_indexes_follow_the_api_server(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, api: client.ApiClient, namespace: str, crd: None
) -> None:
    """A pod deleted and made again under its name is a new UID in the store; a hand-made EndpointSlice's endpoints
    are found by owner, address and pod name, and its update names the owner that changed."""
    core = kubernetes.client.CoreV1Api(api_client)
    discovery = kubernetes.client.DiscoveryV1Api(api_client)
    apply(
        cluster,
        namespace,
        sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}),
    )
    changes = Changes()
    store = ClusterStore(
        api, (namespace,), "k8s.aliyun.com/eni-id", changes.on_pod, changes.on_slice, changes.on_relist
    )
    task = asyncio.create_task(store.run())
    try:
        await asyncio.wait_for(store.synced.wait(), 60)
        apply(cluster, namespace, bare_pod("web-0", {"app": "web"}))
        await until(lambda: (p := store.pod_named(namespace, "web-0")) is not None and p.ip, "web-0 with an IP")
        first = store.pod_named(namespace, "web-0")
        assert first is not None and store.pod(namespace, first.uid) is first
        assert first in store.pods_at(namespace, first.ip or "")

        core.delete_namespaced_pod("web-0", namespace, grace_period_seconds=0)
        await until(lambda: store.pod(namespace, first.uid) is None, "the first web-0 gone from the index")
        apply(cluster, namespace, bare_pod("web-0", {"app": "web"}))
        await until(lambda: (p := store.pod_named(namespace, "web-0")) is not None and p.ip, "web-0 made again")
        second = store.pod_named(namespace, "web-0")
        assert second is not None and second.uid != first.uid and store.pod(namespace, second.uid) is second
        assert store.pod(namespace, first.uid) is None

        body = k8s_pod(core, namespace, "web-0")
        apply(cluster, namespace, service("web"))
        apply(cluster, namespace, endpoint_slice("web-x", "web", [endpoint(second.ip or "", body)]))
        await until(lambda: store.endpoints_of(namespace, "web", second.uid), "the endpoint indexed")
        assert store.endpoints_at(namespace, "web", second.ip or "") == store.endpoints(namespace, "web")
        assert store.endpoints_of_pod_named(namespace, "web", "web-0")[0].pod_uid == second.uid
        changes.slices.clear()
        terminating = endpoint(second.ip or "", body)
        terminating["conditions"] = {"ready": False, "serving": True, "terminating": True}
        discovery.patch_namespaced_endpoint_slice("web-x", namespace, {"endpoints": [terminating]})
        await until(lambda: changes.slices, "the slice's update heard")
        assert changes.slices == [(namespace, "web", frozenset({second.uid}))]
        assert store.endpoints_of(namespace, "web", second.uid)[0].terminating
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def k8s_pod(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> kubernetes.client.V1Pod:
    return core.read_namespaced_pod(name, namespace)
