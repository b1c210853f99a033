"""Pods on a real node: a kubelet and a containerd beside kwok's nodes (localcluster/realnode.py), running the
workload image (workload/albm_workload.py). What kwok cannot show: bridge IPs from the CNI, readiness from a probe,
HTTP answered by the pod's process, a preStop hook that runs before SIGTERM, and a drain on SIGTERM.

Requests go only to the pods' bridge IPs, bounded in count and time (tests/support/realnode.py).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from localcluster import LocalCluster, realnode
from localcluster.binaries import locate_binaries
from tests.support.cluster import Cluster, wait_for
from tests.support.realnode import TIMINGS, RealNodeInfo, Reply, get, refused, workload_deployment, workload_pod

pytestmark = [pytest.mark.integration, pytest.mark.real_node]


def ready(pod: kubernetes.client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def ready_pods(core: kubernetes.client.CoreV1Api, ns: str, app: str, count: int) -> list[kubernetes.client.V1Pod]:
    def check() -> list[kubernetes.client.V1Pod] | None:
        pods = [p for p in core.list_namespaced_pod(ns, label_selector=f"app={app}").items if ready(p)]
        return pods if len(pods) == count else None

    return wait_for(check, f"{count} Ready pods of {app} on the real node", timeout=90)


def gone(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, ns)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_deployment_pods_get_bridge_ips_turn_ready_by_probe_and_answer_http(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, real_node: RealNodeInfo
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    started = time.monotonic()
    # /ready answers 503 for the first 2 s of each process: Ready comes from the probe, not from the pod's start.
    dep = workload_deployment("web", 3, node=real_node.name, ready_after=2)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dep))
    pods = ready_pods(core, namespace, "web", 3)
    TIMINGS["3 pods of a Deployment Ready on the real node"] = time.monotonic() - started

    ips = {p.metadata.name: p.status.pod_ip for p in pods}
    assert len(set(ips.values())) == 3
    assert all(ipaddress.ip_address(ip) in real_node.subnet for ip in ips.values()), ips
    for p in pods:
        assert p.spec.node_name == real_node.name
        [status] = p.status.container_statuses
        running_since: datetime = status.state.running.started_at
        ready_since: datetime = next(c.last_transition_time for c in p.status.conditions if c.type == "Ready")
        # Both are whole seconds: 2 s of 503 from /ready leave at least 1 s between them.
        assert (ready_since - running_since).total_seconds() >= 1, (p.metadata.name, running_since, ready_since)

    # Each pod's own process answers, with its name: 10 requests each, 3 s at most each.
    for name, ip in ips.items():
        replies = [get(real_node, ip) for _ in range(10)]
        assert {(r.status, r.body, r.headers.get("x-pod-name")) for r in replies} == {(200, name + "\n", name)}
    slow = get(real_node, next(iter(ips.values())), "/?delay=0.5")
    assert slow.status == 200


def test_pod_whose_image_is_missing_stays_unready(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, real_node: RealNodeInfo
) -> None:
    """kwok leaves the real node's pods to its kubelet (with kwok managing every node, a pod whose sandbox had
    failed was reported Running and Ready)."""
    core = kubernetes.client.CoreV1Api(api_client)
    pod = workload_pod("missing", node=real_node.name)
    pod["spec"]["containers"][0]["image"] = "localhost/albm-no-such-image:1"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("missing", namespace).status.container_statuses or []
        reason = next((s.state.waiting.reason for s in statuses if s.state.waiting), None)
        return None if reason in (None, "ContainerCreating") else reason  # that one comes first

    assert wait_for(waiting_reason, "the kubelet's reason for not running it", timeout=60) == "ErrImageNeverPull"
    assert not ready(core.read_namespaced_pod("missing", namespace))


def test_pre_stop_keeps_the_pod_serving_then_sigterm_drains_the_request_in_flight(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, real_node: RealNodeInfo
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    pre_stop = 3.0
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(workload_pod("web", node=real_node.name, pre_stop_sleep=pre_stop, grace=20)),
    )
    [pod] = ready_pods(core, namespace, "web", 1)
    ip = pod.status.pod_ip
    assert get(real_node, ip).body == "web\n"

    core.delete_namespaced_pod("web", namespace)
    deleted = time.monotonic()
    # During the preStop hook the process has had no signal: it answers as before (one request each 0.1 s).
    during: list[Reply] = []
    while time.monotonic() - deleted < pre_stop - 1.0:
        during.append(get(real_node, ip))
        time.sleep(0.1)
    assert during and all(r.status == 200 and "x-draining" not in r.headers for r in during), during[-1]

    # A long request sent about a second before SIGTERM is still in flight when it comes (even if the kubelet is
    # slow to start the hook): it finishes, marked as drained, and keeps the process up while new connections are
    # refused.
    long_reply: list[Reply] = []
    long = threading.Thread(target=lambda: long_reply.append(get(real_node, ip, "/?delay=5", timeout=12)))
    long.start()

    # After SIGTERM the listener is closed: new connections are refused while the long request finishes.
    first_refusal = wait_for(
        lambda: (time.monotonic() - deleted) if refused(real_node, ip) else None,
        "new connections refused after SIGTERM",
        timeout=15,
        interval=0.05,
    )
    long.join(timeout=15)
    assert long_reply, "the request in flight at SIGTERM got no answer"
    assert long_reply[0].status == 200 and long_reply[0].body == "web\n"
    assert long_reply[0].headers.get("x-draining") == "1", "SIGTERM came after the long request started"
    assert first_refusal >= pre_stop - 0.2, f"refused {first_refusal:.2f} s after the delete, before its preStop"
    # The process exited once the drain was over, well before the grace period: the pod is gone.
    wait_for(lambda: gone(core, namespace, "web"), "the pod gone after its process exited", timeout=15)
    assert time.monotonic() - deleted < 15


def test_a_cluster_with_a_real_node_leaves_nothing_behind(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cluster of its own (start, a pod Ready, stop), timed: what the real node adds to a run. After stop no
    containerd, shim, kubelet or container process, no mount under the cluster's directory, no bridge and no
    iptables rule of it is left."""
    bins = locate_binaries()
    problems = realnode.problems(bins.kubelet)
    if problems:
        pytest.fail("this machine cannot run a real node: " + "; ".join(problems), pytrace=False)
    # A short directory (not tmp_path, named after the test): the node's unix sockets live under it.
    state_dir = tmp_path_factory.mktemp("rn")
    cluster = LocalCluster(state_dir=state_dir, nodes=0, real_nodes=1)
    started = time.monotonic()
    cluster.start()
    try:
        TIMINGS["own cluster: control plane and real node start"] = time.monotonic() - started
        [node] = cluster.real
        info = RealNodeInfo(node.name, ipaddress.ip_network(node.subnet))
        assert realnode.leftover_interfaces(node) == [node.bridge]
        before_pod = time.monotonic()
        # A host port too: portmap's iptables rules must go with the pod.
        pod = workload_pod("first", node=node.name)
        pod["spec"]["containers"][0]["ports"][0]["hostPort"] = 18080
        cluster.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(pod))
        cluster.kubectl("wait", "-n", "default", "--for=condition=Ready", "pod/first", "--timeout=90s")
        TIMINGS["own cluster: first pod Ready"] = time.monotonic() - before_pod
        ip = json.loads(cluster.kubectl("get", "-n", "default", "pod/first", "-o", "json"))["status"]["podIP"]
        assert get(info, ip).body == "first\n"
        assert realnode.leftover_processes(node), "the node's processes are not seen (so their absence proves nothing)"
        assert realnode.leftover_mounts(node), "the node's mounts are not seen (so their absence proves nothing)"
        assert realnode.leftover_iptables(node), "the host port's rules are not seen"
    finally:
        nodes = list(cluster.real)
        before_stop = time.monotonic()
        cluster.stop()
        TIMINGS["own cluster: stop"] = time.monotonic() - before_stop
    for node in nodes:
        assert realnode.leftovers(node) == {k: [] for k in realnode.leftovers(node)}
    cluster_dir = str(state_dir.resolve())
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith(cluster_dir)]
