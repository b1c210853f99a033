"""More building blocks for scenarios on a shared group (the ledger): workloads pinned to a node, Services with
hand-made EndpointSlices, a second namespace, the group's contents with ports, and the resource's status read
whatever the status shape.

The status readers accept both the compact shape (``members`` and ``pending`` as maps keyed by owner and by
server) and the older lists, so that a scenario run against older code fails on behaviour, not on a KeyError.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes

from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.scenario import FOREIGN, GROUP, deployment, in_group, recent_events, status

IP_BACKEND = {"serverType": "Ip", "port": 8080}
SERVICE_LABEL = "kubernetes.io/service-name"


# -- workloads ------------------------------------------------------------------------------------------------------


def workload(
    name: str,
    replicas: int,
    *,
    grace: int = 1,
    host_network_on: str | None = None,
    fast_rollout: bool = False,
) -> dict[str, Any]:
    """A Deployment labelled ``app: name``. ``host_network_on`` pins its pods to that node with hostNetwork (so
    they all have the node's IP); ``fast_rollout`` replaces every pod at once (maxSurge and maxUnavailable 100%)."""
    dep = deployment(name, replicas, grace)
    pod_spec = dep["spec"]["template"]["spec"]
    if host_network_on:
        pod_spec["hostNetwork"] = True
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": host_network_on}
    if fast_rollout:
        dep["spec"]["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "100%"},
        }
    return dep


def bare_pod(
    name: str, labels: dict[str, str], *, grace: int = 1, host_network_on: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace,
        "containers": [{"name": "c", "image": "example.invalid/web:1"}],
    }
    if host_network_on:
        spec["hostNetwork"] = True
        spec["nodeSelector"] = {"kubernetes.io/hostname": host_network_on}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


def pick_node(core: kubernetes.client.CoreV1Api) -> str:
    """One Ready node (the first by name), to pin pods to."""
    ready = sorted(
        n.metadata.name
        for n in core.list_node().items
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    )
    assert ready, "no Ready node"
    return ready[0]


def live_pods(core: kubernetes.client.CoreV1Api, ns: str, app: str) -> dict[str, str]:
    """name -> IP of the pods of ``app`` that have an IP and no deletionTimestamp (Ready or not)."""
    return {
        p.metadata.name: p.status.pod_ip
        for p in core.list_namespaced_pod(ns, label_selector=f"app={app}").items
        if p.status.pod_ip and not p.metadata.deletion_timestamp
    }


def pods_named(core: kubernetes.client.CoreV1Api, ns: str) -> set[str]:
    return {p.metadata.name for p in core.list_namespaced_pod(ns).items}


def wait_pods_gone(core: kubernetes.client.CoreV1Api, ns: str, names: set[str], timeout: float = 90) -> None:
    wait_for(lambda: not pods_named(core, ns) & names, f"pods {sorted(names)[:3]}... gone", timeout=timeout)


def rollout_restart(cluster: Cluster, ns: str, name: str = "web", timeout: int = 120) -> None:
    """``kubectl rollout restart`` and wait for the rollout to complete (new pods all Ready)."""
    cluster.kubectl("rollout", "restart", f"deployment/{name}", "-n", ns)
    cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, f"--timeout={timeout}s")


def scale(cluster: Cluster, ns: str, name: str, replicas: int) -> None:
    cluster.kubectl("scale", f"deployment/{name}", "-n", ns, f"--replicas={replicas}")


@contextmanager
def extra_namespace(core: kubernetes.client.CoreV1Api, prefix: str) -> Iterator[str]:
    """A second namespace for a scenario, deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"albm-test": "true"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


# -- Services and EndpointSlices ------------------------------------------------------------------------------------


def service(name: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A Service with port ``http`` 80 -> 8080; without ``selector`` its EndpointSlices are the test's to make."""
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def endpoint(ip: str, pod: kubernetes.client.V1Pod | None = None) -> dict[str, Any]:
    """A ready endpoint, with a targetRef to ``pod`` when given."""
    out: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False}}
    if pod is not None:
        out["targetRef"] = {
            "kind": "Pod",
            "name": pod.metadata.name,
            "namespace": pod.metadata.namespace,
            "uid": pod.metadata.uid,
        }
    return out


def endpoint_slice(name: str, service_name: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {SERVICE_LABEL: service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


# -- the group ------------------------------------------------------------------------------------------------------


def seed_servers(emulator: EmulatorProcess, servers: list[tuple[str, int]], foreign_port: int = 8080) -> None:
    """The group holds exactly these (ip, port) servers, next to the foreign server."""
    emulator.add_group(GROUP, [server(ip, port) for ip, port in servers] + [server(FOREIGN, foreign_port)])


def group_members(emulator: EmulatorProcess) -> set[str]:
    """The group's servers as ``id:port``."""
    return {f"{s['ServerId']}:{s.get('Port')}" for s in emulator.group(GROUP)["Servers"]}


def add_to_group(emulator: EmulatorProcess, ips: list[str], port: int = 8080) -> None:
    """What the ingress does for new pods: add their IPs to the group, keeping what is there. (The emulator's admin
    API replaces a group as a whole, so call this only while no removal job is running.)"""
    group = emulator.group(GROUP)
    have = [
        server(s["ServerId"], s["Port"], s["ServerType"])
        for s in group["Servers"]
        if s["ServerType"] == "Ip" and s.get("Port") is not None
    ]
    keys = {(s["server_id"], s["port"]) for s in have}
    have += [server(ip, port) for ip in ips if (ip, port) not in keys]
    emulator.add_group(GROUP, have, type_=group["ServerGroupType"])


def wait_out_of_group(emulator: EmulatorProcess, ids: set[str] | list[str], what: str, timeout: float = 60) -> None:
    """Waits until none of ``ids`` (ServerIds) is in the group; on timeout says which are left."""
    left: set[str] = set()

    def check() -> bool:
        left.clear()
        left.update(in_group(emulator) & set(ids))
        return not left

    try:
        wait_for(check, what, timeout=timeout)
    except AssertionError:
        calls = [(r.get("code"), r.get("servers")) for r in emulator.requests("RemoveServersFromServerGroup")]
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}: still in the group {sorted(left)}; removal calls "
            f"{calls}"
        ) from None


def accepted_removals(emulator: EmulatorProcess) -> Counter[str]:
    """ServerId -> how many accepted (code OK, not dry-run) RemoveServersFromServerGroup calls contained it."""
    out: Counter[str] = Counter()
    for r in emulator.requests("RemoveServersFromServerGroup"):
        if r.get("code") == "OK" and not r.get("dry_run"):
            out.update(r["servers"])
    return out


def tokens_per_server(emulator: EmulatorProcess) -> dict[str, set[str]]:
    """ServerId -> the ClientTokens of every (not dry-run) removal call that named it, whatever its answer: one
    removal decision per server means one token, however often it is retried."""
    out: dict[str, set[str]] = {}
    for r in emulator.requests("RemoveServersFromServerGroup"):
        if not r.get("dry_run"):
            for server_id in r["servers"]:
                out.setdefault(server_id, set()).add(r.get("client_token") or "")
    return out


def jobs_removing(emulator: EmulatorProcess) -> Counter[str]:
    """ServerId -> how many jobs the emulator started that remove it (one per accepted token, retries included)."""
    out: Counter[str] = Counter()
    for job in emulator.admin("GET", "jobs"):
        if job.get("ApiName") == "RemoveServersFromServerGroup":
            out.update(job["RemovedServers"])
    return out


# -- the resource ---------------------------------------------------------------------------------------------------


def server_text(raw: Any) -> str:
    """A status server as ``Type:Id:Port`` (the compact form is that string already)."""
    if isinstance(raw, str):
        return raw
    return f"{raw.get('serverType')}:{raw.get('serverId')}:{raw.get('port')}"


def member_servers(st: dict[str, Any]) -> list[str]:
    """The live members' servers (``Ip:10.0.0.5:8080``), one entry per owner."""
    raw = st.get("members") or {}
    if isinstance(raw, dict):
        return [server_text(m.get("server")) for m in raw.values()]
    return [server_text(m.get("server")) for m in raw if m.get("phase", "Active") == "Active"]


def pending_servers(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """server text -> the pending entry (with its clientToken once it was put into a call)."""
    raw = st.get("pending") or {}
    if isinstance(raw, dict):
        return {server_text(k): v for k, v in raw.items()}
    return {server_text(p.get("server")): p for p in raw}


def settled(st: dict[str, Any]) -> bool:
    """Nothing pending and no job still running."""
    return (
        bool(st.get("conditions"))
        and not pending_servers(st)
        and not st.get("pendingCount")
        and all(j.get("status") != "Processing" for j in st.get("jobs") or [])
    )


def wait_status(
    cluster: Cluster,
    ns: str,
    name: str,
    ok: Callable[[dict[str, Any]], object],
    what: str,
    timeout: float = 60,
) -> dict[str, Any]:
    """Polls resource ``name``'s status until ``ok`` holds; the timeout message shows the last status seen."""
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        seen.clear()
        seen.update(status(cluster, ns, name))
        return copy.deepcopy(seen) if ok(seen) else None

    try:
        return wait_for(check, what, timeout=timeout)
    except AssertionError as exc:
        summary = {k: seen.get(k) for k in ("memberCount", "pendingCount", "removedCount", "lastJob", "conditions")}
        summary["members"] = member_servers(seen)
        summary["pending"] = pending_servers(seen)  # with owners, trigger, token and job: what it waits on
        happened = "\n".join(recent_events(cluster, ns, name))
        raise AssertionError(f"{exc}; last status of {name}: {summary}; its latest Events:\n{happened}") from None


def hold_still(
    check: Callable[[], object],
    what: str,
    seconds: float,
    show: Callable[[], object] | None = None,
    interval: float = 0.25,
) -> None:
    """Fails as soon as ``check`` is falsy during ``seconds``: for things that must not happen (a removal). The
    failure message says ``what`` happened, and what ``show`` returns then (e.g. the request log)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            raise AssertionError(f"{what}: {show() if show else ''}")
        time.sleep(interval)


def sgm_events(cluster: Cluster, ns: str, name: str | None = None) -> list[dict[str, str]]:
    """The Events on ServerGroupMemberships of ``ns`` (of ``name`` only, when given): reason, message, object."""
    out = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json"))
    return [
        {"reason": e.get("reason", ""), "message": e.get("message", ""), "object": e["involvedObject"]["name"]}
        for e in out["items"]
        if e["involvedObject"]["kind"] == "ServerGroupMembership"
        and (name is None or e["involvedObject"]["name"] == name)
    ]


def sgm_gone(cluster: Cluster, ns: str, name: str) -> bool:
    return not cluster.kubectl("get", "sgm", name, "-n", ns, "-o", "name", "--ignore-not-found").strip()


def metric_total(metrics: str, name: str) -> float:
    """The sum of a metric's samples over all label sets (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
