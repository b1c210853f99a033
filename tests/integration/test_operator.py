"""The operator as a process, on the real control plane, against the ALB emulator."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest

from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.operator import OperatorProcess, start_operator
from tests.support.restartable import Restartable
from tests.support.scenario import (
    FOREIGN,
    GROUP,
    apply,
    deployment,
    events,
    in_group,
    pod_ips,
    pods_as_members,
    removal_requests,
    seed,
    sgm,
    status,
    status_when,
)
from tests.support.workloads import service

pytestmark = pytest.mark.integration


# -- removals ---------------------------------------------------------------------------------------------------


def test_rollout_restart_removes_every_old_pod_once_and_nothing_else(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    old = pods_as_members(cluster, core, emulator, namespace, 20)

    cluster.kubectl("rollout", "restart", "deployment/web", "-n", namespace)
    wait_for(lambda: not in_group(emulator) & set(old.values()), "every old pod IP out of the group", timeout=90)

    assert FOREIGN in in_group(emulator)
    accepted = [r for r in removal_requests(emulator) if r["code"] == "OK"]
    removed = [ip for r in accepted for ip in r["servers"]]
    assert sorted(removed) == sorted(old.values()), "each old pod removed exactly once, no new pod removed"
    # The Deployment ends old pods in waves of maxUnavailable (25%: 5 pods); what a wave brings goes out in one
    # call (at most 40 servers), and waves that come while a job runs join the next call.
    assert all(len(r["servers"]) <= 40 for r in accepted)
    assert len(accepted) <= 5, [len(r["servers"]) for r in accepted]
    st = status_when(
        cluster,
        namespace,
        lambda s: not s.get("pending") and s.get("jobs") and all(j["status"] == "Succeeded" for j in s["jobs"]),
        "jobs to succeed",
    )
    assert {j["jobId"] for j in st["jobs"]} == {r["job_id"] for r in accepted}
    assert all(j["clientToken"].startswith("albm-") and len(j["clientToken"]) <= 64 for j in st["jobs"])
    assert "RemovalSubmitted" in events(cluster, namespace) and "RemovalSucceeded" in events(cluster, namespace)
    ready = {c["type"]: c["status"] for c in st["conditions"]}
    assert ready == {"Ready": "True", "Degraded": "False"}
    for pod in core.list_namespaced_pod(namespace).items:  # the operator never writes to pods
        assert not pod.metadata.finalizers
        assert not any("albmembership" in k or "kopf" in k for k in (pod.metadata.annotations or {}))


def test_deleted_pod_is_removed_and_measured(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    pods = pods_as_members(cluster, core, emulator, namespace, 2)
    victim = sorted(pods)[0]
    core.delete_namespaced_pod(victim, namespace)
    wait_for(lambda: pods[victim] not in in_group(emulator), "the deleted pod's IP out of the group")
    wait_for(lambda: "albm_removal_succeeded_seconds_count" in operator.metrics(), "the success histogram")
    metrics = operator.metrics()
    assert 'albm_removal_accepted_seconds_count{since="observed"} 1.0' in metrics
    assert 'albm_removal_accepted_seconds_count{since="deletion"} 1.0' in metrics
    assert 'albm_api_calls_total{action="RemoveServersFromServerGroup",code="OK"} 1.0' in metrics


def test_dropped_static_server_is_removed(
    cluster: Cluster, emulator: EmulatorProcess, namespace: str, operator: OperatorProcess
) -> None:
    emulator.add_group(GROUP, [server("i-keep", 80, "Ecs"), server("i-drop", 80, "Ecs")], type_="Instance")
    both = [
        {"serverId": "i-keep", "serverType": "Ecs", "port": 80},
        {"serverId": "i-drop", "serverType": "Ecs", "port": 80},
    ]
    apply(cluster, namespace, sgm("web", servers=both))
    wait_for(lambda: status(cluster, namespace).get("memberCount") == 2, "2 static members")
    apply(cluster, namespace, sgm("web", servers=both[:1]))
    wait_for(lambda: in_group(emulator) == {"i-keep"}, "i-drop out of the group")
    jobs = wait_for(
        lambda: [j for j in status(cluster, namespace).get("jobs", []) if j["status"] == "Succeeded"],
        "the job recorded",
    )
    assert jobs[0]["trigger"] == "spec-change"


def test_deleting_the_resource_removes_its_members_first(
    cluster: Cluster, emulator: EmulatorProcess, namespace: str, operator: OperatorProcess
) -> None:
    emulator.add_group(
        GROUP, [server("i-a", 80, "Ecs"), server("i-b", 80, "Ecs"), server("i-other", 80, "Ecs")], type_="Instance"
    )
    apply(
        cluster,
        namespace,
        sgm(
            "web",
            servers=[
                {"serverId": "i-a", "serverType": "Ecs", "port": 80},
                {"serverId": "i-b", "serverType": "Ecs", "port": 80},
            ],
        ),
    )
    wait_for(lambda: status(cluster, namespace).get("memberCount") == 2, "2 static members")
    cluster.kubectl("delete", "sgm", "web", "-n", namespace, "--timeout=60s")
    assert in_group(emulator) == {"i-other"}, "the finalizer held deletion until the removal was confirmed"


def test_deleting_with_retain_leaves_members(
    cluster: Cluster, emulator: EmulatorProcess, namespace: str, operator: OperatorProcess
) -> None:
    emulator.add_group(GROUP, [server("i-a", 80, "Ecs")], type_="Instance")
    apply(
        cluster,
        namespace,
        sgm("web", deletionPolicy="Retain", servers=[{"serverId": "i-a", "serverType": "Ecs", "port": 80}]),
    )
    wait_for(lambda: status(cluster, namespace).get("memberCount") == 1, "1 static member")
    cluster.kubectl("delete", "sgm", "web", "-n", namespace, "--timeout=60s")
    assert in_group(emulator) == {"i-a"}
    assert removal_requests(emulator) == []


def test_missing_group_is_degraded_and_deletion_is_released(
    cluster: Cluster, emulator: EmulatorProcess, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, sgm("web", servers=[{"serverId": "i-a", "serverType": "Ecs", "port": 80}]))
    wait_for(lambda: status(cluster, namespace).get("memberCount") == 1, "1 static member")
    cluster.kubectl("delete", "sgm", "web", "-n", namespace, "--wait=false")
    wait_for(
        lambda: cluster.kubectl("get", "sgm", "-n", namespace, "-o", "name") == "", "the resource released", timeout=60
    )
    assert "ServerGroupNotFound" in events(cluster, namespace)
    assert "RemovalRefused" in events(cluster, namespace)
    assert len([r for r in removal_requests(emulator) if r["code"] == "ResourceNotFound.ServerGroup"]) == 1


def test_dry_run_prechecks_and_removes_nothing(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    pods = pods_as_members(cluster, core, emulator, namespace, 1, dryRun=True)
    core.delete_namespaced_pod(next(iter(pods)), namespace)
    job = wait_for(lambda: status(cluster, namespace).get("jobs"), "the dry run recorded")[0]
    assert job["status"] == "DryRunPassed"
    assert set(pods.values()) <= in_group(emulator)
    assert [r.get("dry_run") for r in removal_requests(emulator)] == [True]


def test_terminating_endpoint_of_service_ref_is_removed(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    apply(cluster, namespace, deployment("web", 2))
    apply(cluster, namespace, service("web", {"app": "web"}))
    pods = pod_ips(core, namespace, "web", 2)
    seed(emulator, list(pods.values()))
    apply(cluster, namespace, sgm("web", serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080}))
    wait_for(lambda: status(cluster, namespace).get("memberCount") == 2, "2 endpoint members")
    victim = sorted(pods)[0]
    core.delete_namespaced_pod(victim, namespace)
    wait_for(lambda: pods[victim] not in in_group(emulator), "the terminating endpoint out of the group")
    st = status_when(cluster, namespace, lambda s: s.get("jobs"), "the job recorded")
    assert st["jobs"][0]["trigger"] == "endpoint-terminating"


# -- nothing lost when the operator dies ----------------------------------------------------------------------------


def test_pods_deleted_while_no_operator_ran_are_removed(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    # A grace period of 1 s: the pod is to be gone, not terminating, when the successor starts.
    pods = pods_as_members(cluster, core, emulator, namespace, 2, grace=1)
    operator.kill()
    # A scale-down, so that no replacement pod can take the deleted pod's IP (that server would stay: a live pod
    # holds it; test_ledger covers reuse).
    cluster.kubectl("scale", "deployment/web", "--replicas=1", "-n", namespace)
    gone = wait_for(
        lambda: set(pods) - {p.metadata.name for p in core.list_namespaced_pod(namespace).items},
        "a pod gone while no operator runs",
        timeout=90,
    )
    victim = next(iter(gone))
    assert pods[victim] in in_group(emulator)

    successor = start_operator(cluster.kubeconfig, emulator.url, namespace, tmp_path)
    try:
        wait_for(lambda: pods[victim] not in in_group(emulator), "the successor to remove the pod deleted meanwhile")
        st = status_when(cluster, namespace, lambda s: s.get("jobs"), "the job recorded")
        assert st["jobs"][0]["trigger"] == "pod-gone"
        assert set(pods.values()) - {pods[victim]} <= in_group(emulator), "the live pod stays"
        assert "LeakRepaired" in events(cluster, namespace)
    finally:
        successor.stop()


def test_a_removal_in_flight_when_the_operator_dies_is_sent_again_with_the_same_token(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    pods = pods_as_members(cluster, core, emulator, namespace, 1)
    # The cloud takes 3 s to answer: the call is in flight, its token already in status, when the operator dies.
    emulator.admin("PUT", "faults", {"latency_ms": 3000, "actions": ["RemoveServersFromServerGroup"]})
    core.delete_namespaced_pod(next(iter(pods)), namespace)
    pending = wait_for(
        lambda: [p for p in (status(cluster, namespace).get("pending") or {}).values() if p.get("clientToken")],
        "the pending removal with its token in status",
    )
    in_flight = wait_for(lambda: emulator.admin("GET", "in-flight"), "the call to reach the cloud")
    operator.kill()
    token = pending[0]["clientToken"]
    assert [r["client_token"] for r in in_flight] == [token], "the call was in flight when the operator died"
    assert emulator.admin("GET", "in-flight") == in_flight, "and still was after"

    successor = start_operator(cluster.kubeconfig, emulator.url, namespace, tmp_path)
    try:
        wait_for(lambda: not in_group(emulator) & set(pods.values()), "the removal to complete", timeout=60)
        requests = removal_requests(emulator)
        assert {r["client_token"] for r in requests} == {token}, "every try carried the recorded token"
        assert len(emulator.admin("GET", "jobs")) == 1, "one job, however many tries"
        st = status_when(cluster, namespace, lambda s: not s.get("pending"), "pending cleared")
        assert st["jobs"][0]["clientToken"] == token
    finally:
        successor.stop()


def test_throttling_and_a_busy_group_are_retried_with_one_job_per_token(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    ips = pods_as_members(cluster, core, emulator, namespace, 3)
    emulator.admin(
        "PUT",
        "faults",
        {
            "actions": ["RemoveServersFromServerGroup"],
            "script": [
                {"kind": "error", "code": "Throttling.User"},
                {"kind": "error", "code": "IncorrectStatus.ServerGroup"},
                {"kind": "error", "code": "Throttling.User"},
                {"kind": "error", "code": "IncorrectStatus.ServerGroup"},
            ],
        },
    )
    for name in sorted(ips)[:2]:
        core.delete_namespaced_pod(name, namespace)
    leaving = {ips[n] for n in sorted(ips)[:2]}
    wait_for(lambda: not in_group(emulator) & leaving, "the removals, eventually")
    requests = removal_requests(emulator)
    assert {"Throttling.User", "IncorrectStatus.ServerGroup", "OK"} <= {r["code"] for r in requests}
    jobs_per_token: dict[str, set[str]] = {}
    for r in requests:
        if r["code"] == "OK":
            jobs_per_token.setdefault(r["client_token"], set()).add(r["job_id"])
    assert all(len(j) == 1 for j in jobs_per_token.values())
    assert len(emulator.admin("GET", "jobs")) == len(jobs_per_token)


def test_killed_after_the_pending_removal_was_written_and_before_its_call_went_out(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, restartable: Restartable
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    ips = pods_as_members(cluster, core, restartable.emulator, namespace, 1)
    restartable.emulator.stop()  # the cloud is unreachable: the removal is decided and recorded, its call cannot go out
    core.delete_namespaced_pod(next(iter(ips)), namespace)
    pending = status_when(
        cluster,
        namespace,
        lambda s: any(p.get("clientToken") for p in (s.get("pending") or {}).values()),
        "the pending removal with its token in status",
    )["pending"]
    restartable.operator.kill()
    token = next(iter(pending.values()))["clientToken"]
    emulator = restartable.start_emulator()
    restartable.start_operator()
    wait_for(lambda: not in_group(emulator) & set(ips.values()), "the successor to send it")
    assert {r["client_token"] for r in removal_requests(emulator)} == {token}
    assert len(emulator.admin("GET", "jobs")) == 1
