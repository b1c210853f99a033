"""Membership both ways, on the real control plane against the ALB emulator (PRODUCT.md 3.11-3.13): Ready pods are
added with the resource's weight; pods that declare the readiness gate turn Ready only once their server is Available
(kwok honours readiness gates as the kubelet does); a rolling update with both gates never has fewer of the
workload's servers in the group than the Deployment promises; an operator killed during an add burst is followed by
one that adds the rest and nothing twice; deletions refused after the gate took the server out are put back; foreign
servers are never touched."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.gate import GATE, Gated
from tests.support.operator import OperatorProcess
from tests.support.refusing_webhook import refusing_pod_deletions
from tests.support.restartable import Restartable
from tests.support.scenario import FOREIGN, GROUP, apply, deployment, events, pod_ips, sgm, status_when
from tests.support.workloads import bare_pod, scale

pytestmark = pytest.mark.integration

CONDITION = "target-health.albmembership.io/web"
MEMBERS = {"podSelector": {"matchLabels": {"app": "web"}}, "backend": {"serverType": "Ip", "port": 8080}}


def gated_deployment(replicas: int, grace: int = 5) -> dict[str, Any]:
    """The worked example of the docs: the readiness gate, and a rollout that never goes below its replicas."""
    out = deployment("web", replicas, grace)
    out["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    out["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": CONDITION}]
    return out


def servers(emulator: EmulatorProcess) -> dict[str, dict[str, Any]]:
    """The group's servers by ServerId, as the cloud lists them (Status, Weight)."""
    return {s["ServerId"]: s for s in emulator.group(GROUP)["Servers"]}


def available(emulator: EmulatorProcess) -> set[str]:
    return {ip for ip, s in servers(emulator).items() if s["Status"] == "Available"}


def added_once(emulator: EmulatorProcess) -> Counter[str]:
    """How many accepted AddServersToServerGroup calls each server was in (each job counted once)."""
    jobs = {r["job_id"]: r["servers"] for r in emulator.requests("AddServersToServerGroup") if r["code"] == "OK"}
    return Counter(ip for ips in jobs.values() for ip in ips)


def ready_pods(core: kubernetes.client.CoreV1Api, ns: str) -> dict[str, str]:
    """name -> IP of the Ready, non-terminating pods of web."""
    return {
        p.metadata.name: p.status.pod_ip
        for p in core.list_namespaced_pod(ns, label_selector="app=web").items
        if not p.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }


def settled(st: dict[str, Any], count: int) -> bool:
    return st.get("memberCount") == count and st.get("inRotationCount") == count and not st.get("pending")


def test_ready_pods_are_added_with_the_resources_weight_and_scaling_follows(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    emulator.add_group(GROUP, [server(FOREIGN)])
    apply(cluster, namespace, deployment("web", 4))
    ips = pod_ips(core, namespace, "web", 4)
    apply(cluster, namespace, sgm("web", **MEMBERS, registration={"enabled": True, "weight": 40}))

    wait_for(lambda: set(ips.values()) <= available(emulator), "the 4 pods Available in the group")
    listed = servers(emulator)
    assert {listed[ip]["Weight"] for ip in ips.values()} == {40}, "added with the resource's weight"
    assert listed[FOREIGN]["Weight"] == 100, "the foreign server is as it was"
    st = status_when(cluster, namespace, lambda s: settled(s, 4), "4 members in rotation")
    assert {m["inGroup"] for m in st["members"].values()} == {"Available"}
    assert added_once(emulator) == Counter(ips.values()), "each pod added by one accepted call"
    assert {"RegistrationSubmitted", "RegistrationSucceeded"} <= set(events(cluster, namespace))

    scale(cluster, namespace, "web", 2)
    st = status_when(cluster, namespace, lambda s: settled(s, 2), "2 members in rotation after the scale-down")
    live = set(pod_ips(core, namespace, "web", 2).values())
    wait_for(lambda: set(servers(emulator)) == live | {FOREIGN}, "the group holds the 2 live pods and the foreign one")
    scale(cluster, namespace, "web", 5)
    live = set(pod_ips(core, namespace, "web", 5).values())
    wait_for(lambda: live <= available(emulator), "the 5 pods Available after the scale-up")
    assert set(servers(emulator)) == live | {FOREIGN}
    status_when(cluster, namespace, lambda s: settled(s, 5), "5 members in rotation after the scale-up")


def test_a_pod_with_the_readiness_gate_is_ready_only_once_its_server_is_available(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    emulator.add_group(GROUP, [server(FOREIGN)])
    emulator.admin("PUT", "behaviour", {"add_job_seconds": 2.0})
    apply(cluster, namespace, sgm("web", **MEMBERS, registration={"enabled": True}))
    status_when(cluster, namespace, lambda s: "conditions" in s, "the resource started")
    apply(cluster, namespace, gated_deployment(3))

    early: list[str] = []
    reasons: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        in_rotation = available(emulator)
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        for p in pods:
            conditions = {c.type: c for c in p.status.conditions or []}
            if CONDITION in conditions:
                reasons.add(conditions[CONDITION].reason)
            ready = conditions.get("Ready")
            if ready is not None and ready.status == "True" and p.status.pod_ip not in in_rotation:
                early.append(p.metadata.name)
        if len(ready_pods(core, namespace)) == 3:
            break
        time.sleep(0.1)
    assert len(ready_pods(core, namespace)) == 3, "every pod Ready in the end"
    assert early == [], "no pod was Ready while its server was not Available"
    assert "ServerAdding" in reasons, reasons
    assert set(ready_pods(core, namespace).values()) <= available(emulator)
    pod = core.list_namespaced_pod(namespace, label_selector="app=web").items[0]
    [gate] = [c for c in pod.status.conditions if c.type == CONDITION]
    assert (gate.status, gate.reason) == ("True", "ServerAvailable")


def test_a_rolling_update_with_both_gates_never_has_fewer_servers_than_replicas(
    gated: Gated, api_client: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    replicas = 6
    gated.emulator.add_group(GROUP, [server(FOREIGN)])
    gated.serving()
    apply(gated.cluster, gated.namespace, sgm("web", **MEMBERS, deletionGate=GATE, registration={"enabled": True}))
    status_when(gated.cluster, gated.namespace, lambda s: "conditions" in s, "the resource started")
    apply(gated.cluster, gated.namespace, gated_deployment(replicas))
    wait_for(lambda: len(ready_pods(core, gated.namespace)) == replicas, "6 pods Ready", timeout=90)
    old = set(ready_pods(core, gated.namespace).values())
    assert old <= available(gated.emulator)

    fewest = replicas
    exposed: list[str] = []
    gated.cluster.kubectl("rollout", "restart", "deployment/web", "-n", gated.namespace)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        in_rotation = available(gated.emulator) - {FOREIGN}
        fewest = min(fewest, len(in_rotation))
        for p in core.list_namespaced_pod(gated.namespace, label_selector="app=web").items:
            if p.metadata.deletion_timestamp and p.status.pod_ip in in_rotation:
                exposed.append(p.metadata.name)
        ready = set(ready_pods(core, gated.namespace).values())
        if len(ready) == replicas and not ready & old and in_rotation == ready:
            break
        time.sleep(0.1)
    new = set(ready_pods(core, gated.namespace).values())
    assert len(new) == replicas and not new & old, "the rollout ended"
    assert available(gated.emulator) == new | {FOREIGN}, "the new pods in, the old ones out, the foreign one kept"
    assert fewest >= replicas, f"the group held only {fewest} of the workload's servers at one point"
    assert exposed == [], "a terminating pod's server was in rotation"


def test_an_operator_killed_during_an_add_burst_is_followed_by_one_that_adds_the_rest_once(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, restartable: Restartable
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    emulator = restartable.emulator
    emulator.add_group(GROUP, [server(FOREIGN)])
    emulator.admin("PUT", "behaviour", {"add_job_seconds": 1.0, "max_servers_per_call": 40})
    apply(cluster, namespace, sgm("web", **MEMBERS, registration={"enabled": True}))
    status_when(cluster, namespace, lambda s: "conditions" in s, "the resource started")
    apply(cluster, namespace, deployment("web", 30))
    wait_for(lambda: added_once(emulator), "the first addition accepted", timeout=60)
    restartable.operator.kill()
    ips = set(pod_ips(core, namespace, "web", 30).values())
    restartable.start_operator()
    wait_for(lambda: ips <= available(emulator), "all 30 pods Available", timeout=90)
    counts = added_once(emulator)
    assert set(counts) == ips and set(counts.values()) == {1}, f"each added by one accepted call: {counts}"
    assert FOREIGN in servers(emulator)
    status_when(cluster, namespace, lambda s: settled(s, 30), "30 members in rotation")


@pytest.fixture
def undoing(gated: Gated) -> Iterator[Gated]:
    """Remove-only with the gate (someone else adds): the pods' servers are in the group, the gate on."""
    gated.serving()
    yield gated


def test_a_deletion_another_webhook_refuses_puts_the_server_back(
    undoing: Gated, api_client: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    ips = undoing.members(2, weight=30)
    name, ip = sorted(ips.items())[0]
    weight_before = servers(undoing.emulator)[ip]["Weight"]
    assert weight_before == 30, "not the API's default: the weight it had must be read, not assumed"
    with refusing_pod_deletions(api_client, undoing.namespace):
        apply(undoing.cluster, undoing.namespace, bare_pod("probe", {"app": "probe"}))

        def refused() -> bool:
            try:
                core.delete_namespaced_pod("probe", undoing.namespace)
            except ApiException as exc:
                return exc.status == 403
            return False

        wait_for(refused, "the other webhook in force")
        with pytest.raises(ApiException) as refusal:
            core.delete_namespaced_pod(name, undoing.namespace)
        assert refusal.value.status == 403, "refused by the other webhook, after the gate took the server out"
        assert ip not in available(undoing.emulator), "the gate held the deletion until the server was out"
        wait_for(lambda: ip in available(undoing.emulator), "the server back in the group", timeout=20)
    assert servers(undoing.emulator)[ip]["Weight"] == weight_before, "with the weight it had"
    assert "RemovalUndone" in events(undoing.cluster, undoing.namespace)
    assert FOREIGN in servers(undoing.emulator)
    pod = core.read_namespaced_pod(name, undoing.namespace)
    assert pod.metadata.deletion_timestamp is None, "still live"
    st = status_when(undoing.cluster, undoing.namespace, lambda s: not s.get("pending"), "nothing pending")
    assert st["members"][pod.metadata.uid]["inGroup"] == "Available"


def test_concurrent_evictions_a_budget_refuses_never_take_their_servers_out(
    undoing: Gated, api_client: kubernetes.client.ApiClient
) -> None:
    """kubectl drain sends its evictions at once. Before, the gate held each while its server left, all of them
    reading the budget's room (none admitted yet); the Eviction API then refused two, whose servers the undo put
    back 5 s later. Now the gate holds no more evictions at once than the budget allows: the others wait for room
    (none comes: bare pods have no replacement) to the end of their hold, are let through untouched, refused by the
    Eviction API, and nothing is undone."""
    [op] = undoing.operators
    core = kubernetes.client.CoreV1Api(api_client)
    policy = kubernetes.client.PolicyV1Api(api_client)
    # Bare pods: no replacement turns Ready and gives the budget room again while the evictions are held.
    for i in range(3):
        apply(undoing.cluster, undoing.namespace, bare_pod(f"web-{i}", {"app": "web"}))
    ips = pod_ips(core, undoing.namespace, "web", 3)
    undoing.emulator.add_group(GROUP, [server(ip) for ip in ips.values()] + [server(FOREIGN)])
    # A short hold: the evictions the budget blocks wait for room to its end.
    gate = {**GATE, "maxWaitSeconds": 5}
    apply(undoing.cluster, undoing.namespace, sgm("web", **MEMBERS, deletionGate=gate))
    status_when(undoing.cluster, undoing.namespace, lambda s: s.get("memberCount") == 3, "members recorded")
    policy.create_namespaced_pod_disruption_budget(
        undoing.namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        },
    )

    def allowed() -> int:
        return int(policy.read_namespaced_pod_disruption_budget("web", undoing.namespace).status.disruptions_allowed)

    wait_for(lambda: allowed() == 1, "the budget allowing one disruption")
    answers: dict[str, int] = {}

    def evict(name: str) -> None:
        body = kubernetes.client.V1Eviction(metadata=kubernetes.client.V1ObjectMeta(name=name))
        try:
            core.create_namespaced_pod_eviction(name, undoing.namespace, body)
            answers[name] = 201
        except ApiException as exc:
            answers[name] = exc.status

    threads = [threading.Thread(target=evict, args=(name,)) for name in ips]
    for t in threads:
        t.start()
    samples: list[set[str]] = []
    # While the evictions run, and for the undo's 5 s after: a server put back would be seen leaving first.
    settled_at: float | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (settled_at is None or time.monotonic() < settled_at + 6):
        samples.append(available(undoing.emulator))
        if settled_at is None and not any(t.is_alive() for t in threads):
            settled_at = time.monotonic()
        time.sleep(0.1)
    for t in threads:
        t.join(1)
    assert sorted(answers.values()) == [201, 429, 429], answers
    kept = {ips[name] for name, code in answers.items() if code == 429}
    evicted = next(ips[name] for name, code in answers.items() if code == 201)
    calls = undoing.emulator.requests("RemoveServersFromServerGroup")
    assert all("servers" in r and "code" in r for r in calls), calls
    removed = {ip for r in calls if r["code"] == "OK" for ip in r["servers"]}
    assert removed == {evicted}, f"only the evicted pod's server was ever removed: {calls}"
    assert all(kept <= sample for sample in samples), "the refused evictions' servers stayed Available throughout"
    assert evicted not in available(undoing.emulator), "the evicted pod's server is out"
    series = [x for x in op.metrics().splitlines() if x.startswith("albm_removals_undone_total")]
    assert series, "the undo counter is exposed (a 0 from no series at all would prove nothing)"
    assert sum(float(x.rsplit(" ", 1)[1]) for x in series) == 0, "nothing to undo"
    assert FOREIGN in servers(undoing.emulator)
