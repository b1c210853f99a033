"""Building blocks of operator scenarios: workloads, resources, the group's contents, the resource's status."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kubernetes

from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server

GROUP = "sgp-optest00000001"
FOREIGN = "192.0.2.250"  # another team's server in the same group: never to be touched


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def deployment_of(name: str, replicas: int, pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A Deployment ``name`` of ``replicas`` pods labelled app=<name>, running ``pod_spec``."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def deployment(name: str, replicas: int, grace: int = 30) -> dict[str, Any]:
    """kwok's pods: an image no node pulls."""
    return deployment_of(
        name,
        replicas,
        {"terminationGracePeriodSeconds": grace, "containers": [{"name": "c", "image": "example.invalid/web:1"}]},
    )


def sgm(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "albmembership.io/v1alpha1",
        "kind": "ServerGroupMembership",
        "metadata": {"name": name},
        "spec": {"serverGroupId": GROUP, **spec},
    }


def pod_ips(core: kubernetes.client.CoreV1Api, ns: str, app: str, count: int) -> dict[str, str]:
    """name -> IP of ``count`` Ready, non-terminating pods."""

    def ready() -> dict[str, str] | None:
        pods = core.list_namespaced_pod(ns, label_selector=f"app={app}").items
        out = {
            p.metadata.name: p.status.pod_ip
            for p in pods
            if p.status.pod_ip
            and not p.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        }
        return out if len(out) == count else None

    return wait_for(ready, f"{count} Ready pods of {app}")


def seed(emulator: EmulatorProcess, ips: list[str], port: int = 8080) -> None:
    """What another controller (the ingress) did: the pods are in the group, next to a foreign server."""
    emulator.add_group(GROUP, [server(ip, port) for ip in ips] + [server(FOREIGN, port)])


def in_group(emulator: EmulatorProcess) -> set[str]:
    return {s["ServerId"] for s in emulator.group(GROUP)["Servers"]}


def status(cluster: Cluster, ns: str, name: str = "web") -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "sgm", name, "-n", ns, "-o", "json")).get("status") or {}


def status_when(
    cluster: Cluster, ns: str, ok: Callable[[dict[str, Any]], object], what: str, timeout: float = 60
) -> dict[str, Any]:
    """Polls the resource's status until ``ok`` holds; on timeout the message shows the last status seen."""
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        seen.clear()
        seen.update(status(cluster, ns))
        return dict(seen) if ok(seen) else None

    try:
        return wait_for(check, what, timeout=timeout)
    except AssertionError as exc:
        summary = {k: seen.get(k) for k in ("memberCount", "pendingCount", "lastJob", "conditions")}
        raise AssertionError(f"{exc}; last status: {summary}") from None


def events(cluster: Cluster, ns: str) -> list[str]:
    out = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json"))
    return [e["reason"] for e in out["items"] if e["involvedObject"]["kind"] == "ServerGroupMembership"]


def recent_events(cluster: Cluster, ns: str, name: str, last: int = 12) -> list[str]:
    """The resource's latest Events, oldest first, for a failure message: what the operator last did and saw."""
    out = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json"))
    mine = [e for e in out["items"] if e["involvedObject"].get("name") == name]
    mine.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [f"{e.get('lastTimestamp')} {e.get('reason')}: {(e.get('message') or '')[:300]}" for e in mine[-last:]]


def removal_requests(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("RemoveServersFromServerGroup")]


def pods_as_members(
    cluster: Cluster,
    core: kubernetes.client.CoreV1Api,
    emulator: EmulatorProcess,
    namespace: str,
    replicas: int,
    *,
    grace: int = 30,
    **spec: Any,
) -> dict[str, str]:
    """The common start: a Deployment of Ready pods (``grace``: their termination grace period) whose IPs are in
    the group (next to a foreign server), and a ServerGroupMembership selecting them (``spec`` adds fields, e.g.
    dryRun) with its members recorded. Returns pod name -> IP."""
    apply(cluster, namespace, deployment("web", replicas, grace))
    ips = pod_ips(core, namespace, "web", replicas)
    seed(emulator, list(ips.values()))
    apply(
        cluster,
        namespace,
        sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}, **spec),
    )
    status_when(cluster, namespace, lambda st: st.get("memberCount") == replicas, f"{replicas} members recorded")
    return ips
