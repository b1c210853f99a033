"""The local control plane behaves like a real cluster in the ways the operator depends on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from localcluster import ClusterError, LocalCluster
from localcluster.cluster import is_alive
from tests.support.cluster import Cluster, wait_for
from tests.support.scenario import deployment
from tests.support.workloads import service

pytestmark = pytest.mark.integration

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.albmembership.io"},
    "spec": {
        "group": "test.albmembership.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def ready_pods(core: kubernetes.client.CoreV1Api, ns: str, selector: str) -> list[kubernetes.client.V1Pod]:
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and p.status.pod_ip
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def wait_ready_pods(
    core: kubernetes.client.CoreV1Api, ns: str, selector: str, count: int
) -> list[kubernetes.client.V1Pod]:
    return wait_for(
        lambda: (pods := ready_pods(core, ns, selector)) and len(pods) == count and pods,
        f"{count} Ready pods with IPs ({selector})",
    )


def test_crd_applied_and_custom_resource_read_back(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    cluster.wait_established("widgets.test.albmembership.io")
    widget = {
        "apiVersion": "test.albmembership.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(widget))
    back = json.loads(cluster.kubectl("get", "widget", "w1", "-n", namespace, "-o", "json"))
    assert back["spec"] == {"size": 3}
    assert back["metadata"]["uid"]

    # The schema is enforced by the API server, naming the field.
    bad = {**widget, "metadata": {"name": "w2", "namespace": namespace}, "spec": {"size": 0}}
    with pytest.raises(ClusterError, match=r"spec\.size"):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(bad))


def test_deployment_pods_ready_with_ips_and_endpointslices(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("web", 3, grace=2)))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(service("web", {"app": "web"})))

    pods = wait_ready_pods(core, namespace, "app=web", 3)
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 3
    assert all(p.spec.node_name and p.spec.node_name.startswith("kwok-node-") for p in pods)

    discovery = kubernetes.client.DiscoveryV1Api(api_client)

    def slice_addresses() -> set[str]:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web"
        ).items
        return {a for s in slices for e in s.endpoints or [] if e.conditions.ready for a in e.addresses}

    assert wait_for(lambda: slice_addresses() == ips and ips, "the EndpointSlice to list the pod IPs")


def test_deleted_pod_is_terminating_for_its_grace_period_then_gone(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "p"}},
        "spec": {
            "terminationGracePeriodSeconds": 4,
            "containers": [{"name": "c", "image": "example.invalid/c:1"}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    wait_ready_pods(core, namespace, "app=p", 1)

    core.delete_namespaced_pod("p", namespace)
    deleted_at = time.monotonic()
    terminating = core.read_namespaced_pod("p", namespace)
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 4
    time.sleep(1.5)
    assert core.read_namespaced_pod("p", namespace).metadata.deletion_timestamp is not None, (
        "a gracefully deleted pod must stay Terminating during its grace period"
    )

    def gone() -> bool:
        try:
            core.read_namespaced_pod("p", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, "the pod to disappear after its grace period", timeout=30)
    assert time.monotonic() - deleted_at >= 3.0


def test_rollout_restart_produces_terminating_pods(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("roll", 2, grace=5)))
    old = {p.metadata.name for p in wait_ready_pods(core, namespace, "app=roll", 2)}

    cluster.kubectl("rollout", "restart", "deployment/roll", "-n", namespace)

    def terminating_old() -> set[str]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=roll").items
        return {p.metadata.name for p in pods if p.metadata.deletion_timestamp and p.metadata.name in old}

    assert wait_for(terminating_old, "an old pod to turn Terminating")
    cluster.kubectl("rollout", "status", "deployment/roll", "-n", namespace, "--timeout=90s")
    new = {p.metadata.name for p in ready_pods(core, namespace, "app=roll")}
    assert len(new) == 2
    assert not new & old


def test_rbac_refuses_a_service_account_without_rights(api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    config = kubernetes.client.Configuration()
    config.host = api_client.configuration.host
    config.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    with kubernetes.client.ApiClient(config) as as_nobody:
        nobody_core = kubernetes.client.CoreV1Api(as_nobody)
        with pytest.raises(ApiException) as refused:
            nobody_core.list_namespaced_secret(namespace)
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in refused.value.body

        # The token itself is valid: a granted right works, so the 403 above is RBAC, not authentication.
        rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-secrets"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-secrets"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )
        wait_for(lambda: nobody_core.list_namespaced_secret(namespace) is not None, "the grant to apply")


def test_a_cluster_stops_without_leaving_processes(tmp_path: Path, local_cluster: LocalCluster | None) -> None:
    if local_cluster is None:
        pytest.skip("tests run against an existing cluster; this one checks the local control plane itself")
    second = LocalCluster(state_dir=tmp_path / "second", nodes=1)
    second.start()
    pids = [c.pid for c in second.components]
    assert len(pids) == 5
    assert all(is_alive(pid) for pid in pids)
    second.stop()
    assert not any(is_alive(pid) for pid in pids)
    assert not (tmp_path / "second" / "cluster.json").exists()
