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
from tests.support.workloads import SERVICE_LABEL, bare_pod, service

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


GATE = "target-health.albmembership.io/web"
GATES_NOT_READY = "ReadinessGatesNotReady"  # the kubelet's reason, which kwok's stages copy


def condition(pod: kubernetes.client.V1Pod, kind: str) -> kubernetes.client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def set_gate(core: kubernetes.client.CoreV1Api, ns: str, name: str, status: str) -> None:
    """What the operator does: the gate's condition on pods/status, merged by type into the others."""
    core.patch_namespaced_pod_status(
        name,
        ns,
        {"status": {"conditions": [{"type": GATE, "status": status}]}},
        _content_type="application/strategic-merge-patch+json",
    )


def endpoints_ready(discovery: kubernetes.client.DiscoveryV1Api, ns: str, service_name: str) -> dict[str, bool]:
    """address -> the endpoint's ready condition, over the Service's EndpointSlices."""
    slices = discovery.list_namespaced_endpoint_slice(ns, label_selector=f"{SERVICE_LABEL}={service_name}").items
    return {a: bool(e.conditions.ready) for s in slices for e in s.endpoints or [] for a in e.addresses}


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


def test_readiness_gate_holds_a_pod_not_ready_until_its_condition_is_true(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    discovery = kubernetes.client.DiscoveryV1Api(api_client)
    gated = bare_pod("gated", {"app": "web"})
    gated["spec"]["readinessGates"] = [{"conditionType": GATE}]
    for obj in (service("web", {"app": "web"}), gated, bare_pod("plain", {"app": "web"})):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))

    def started(name: str) -> kubernetes.client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" and pod.status.pod_ip else None

    plain = wait_for(lambda: started("plain"), "the pod without gates to start")
    assert condition(plain, "Ready").status == "True", "a pod without readiness gates is Ready at once"
    pod = wait_for(lambda: started("gated"), "the gated pod to start")
    time.sleep(1.0)  # time for anything that would wrongly open the gate
    pod = core.read_namespaced_pod("gated", namespace)
    assert condition(pod, "ContainersReady").status == "True"
    assert all(s.ready for s in pod.status.container_statuses)
    ready = condition(pod, "Ready")
    assert (ready.status, ready.reason) == ("False", GATES_NOT_READY)
    assert ready.message == f'corresponding condition of pod readiness gate "{GATE}" does not exist.'
    assert condition(pod, GATE) is None, "only the gate's owner writes the gate's condition"
    gated_ip, plain_ip = pod.status.pod_ip, plain.status.pod_ip
    wait_for(
        lambda: endpoints_ready(discovery, namespace, "web") == {gated_ip: False, plain_ip: True},
        "the gated pod's endpoint listed not ready, the other one ready",
    )

    set_gate(core, namespace, "gated", "True")
    opened = time.monotonic()
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("gated", namespace)) and condition(p, "Ready").status == "True" and p,
        "the pod to turn Ready once its gate is True",
        timeout=10,
    )
    ready = condition(pod, "Ready")
    assert (ready.reason, ready.message) == (None, None)
    assert condition(pod, GATE).status == "True"
    wait_for(
        lambda: endpoints_ready(discovery, namespace, "web") == {gated_ip: True, plain_ip: True},
        "the gated pod's endpoint to turn ready",
        timeout=10,
    )
    assert time.monotonic() - opened < 10

    # The gate closing again (a JSON patch this time, as some controllers write it) takes Ready away.
    pod = core.read_namespaced_pod("gated", namespace)
    index = next(i for i, c in enumerate(pod.status.conditions) if c.type == GATE)
    core.patch_namespaced_pod_status(
        "gated",
        namespace,
        [
            {"op": "test", "path": f"/status/conditions/{index}/type", "value": GATE},
            {"op": "replace", "path": f"/status/conditions/{index}/status", "value": "False"},
        ],
        _content_type="application/json-patch+json",
    )
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("gated", namespace)) and condition(p, "Ready").status == "False" and p,
        "the pod to turn not Ready once its gate is False",
        timeout=10,
    )
    ready = condition(pod, "Ready")
    assert ready.reason == GATES_NOT_READY
    assert ready.message == f'the status of pod readiness gate "{GATE}" is not "True", but False'
    wait_for(
        lambda: endpoints_ready(discovery, namespace, "web") == {gated_ip: False, plain_ip: True},
        "the gated pod's endpoint to turn not ready again",
        timeout=10,
    )
    assert condition(core.read_namespaced_pod("plain", namespace), "Ready").status == "True"


def test_pod_disruption_budget_allows_one_eviction_at_a_time(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    """The disruption controller keeps the budget's status and the API server's eviction obeys it. The pods carry
    a readiness gate so that a replacement stays not Ready until the test says so: kwok would make it Ready within
    milliseconds, and whether the next eviction came before that would be a race."""
    core = kubernetes.client.CoreV1Api(api_client)
    policy = kubernetes.client.PolicyV1Api(api_client)
    dep = deployment("web", 3, grace=2)
    dep["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": GATE}]
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }
    for obj in (dep, pdb):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))

    def budget(**want: int) -> kubernetes.client.V1PodDisruptionBudgetStatus | None:
        st = policy.read_namespaced_pod_disruption_budget("web", namespace).status
        seen = {k: getattr(st, k) for k in want} if st and st.observed_generation == 1 else None
        return st if seen == want else None

    def live() -> list[kubernetes.client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]

    def evict(name: str) -> int:
        try:
            core.create_namespaced_pod_eviction(name, namespace, {"metadata": {"name": name, "namespace": namespace}})
        except ApiException as exc:
            if exc.status == 429:
                assert "disruption budget" in exc.body, exc.body
            return int(exc.status)
        return 201

    pods = wait_for(lambda: (ps := live()) and len(ps) == 3 and ps, "3 running pods")
    # Gates closed: no pod is Ready, so the budget allows nothing.
    wait_for(
        lambda: budget(expected_pods=3, current_healthy=0, desired_healthy=2, disruptions_allowed=0),
        "the budget's status with no pod Ready",
    )
    assert evict(pods[0].metadata.name) == 429
    for p in pods:
        set_gate(core, namespace, p.metadata.name, "True")
    wait_for(
        lambda: budget(expected_pods=3, current_healthy=3, desired_healthy=2, disruptions_allowed=1),
        "the budget to allow one disruption",
    )

    names = [p.metadata.name for p in pods]
    assert [evict(n) for n in names] == [201, 429, 429]
    assert core.read_namespaced_pod(names[0], namespace).metadata.deletion_timestamp is not None
    assert all(core.read_namespaced_pod(n, namespace).metadata.deletion_timestamp is None for n in names[1:])

    # The replacement runs but is not Ready (its gate is closed): still nothing more may go.
    replacement = wait_for(
        lambda: [p for p in live() if p.metadata.name not in names], "the ReplicaSet's replacement pod"
    )[0]
    time.sleep(1.0)
    assert condition(core.read_namespaced_pod(replacement.metadata.name, namespace), "Ready").status == "False"
    assert budget(current_healthy=2, disruptions_allowed=0) is not None
    assert evict(names[1]) == 429

    set_gate(core, namespace, replacement.metadata.name, "True")
    wait_for(lambda: budget(current_healthy=3, disruptions_allowed=1), "the budget to allow one again")
    assert evict(names[1]) == 201
    assert evict(names[2]) == 429


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
