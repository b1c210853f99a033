"""Pods on the local cluster's real node (localcluster/realnode.py) and HTTP to them.

Traffic goes only to 127.0.0.1 and to addresses on the bridge the run made (its pod IPs): ``get`` refuses any other
address, and every request has a timeout, so a test's request loop is bounded in count and in time.
"""

from __future__ import annotations

import http.client
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from localcluster.images import WORKLOAD_IMAGE
from localcluster.realnode import LABEL
from tests.support.scenario import deployment_of

# What the real node added to this run, in seconds (printed at the end of the run by tests/conftest.py).
TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class RealNodeInfo:
    name: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


def workload_spec(
    *,
    node: str | None,
    grace: int = 10,
    pre_stop_sleep: float | None = None,
    ready_after: float = 0.0,
    probe_period: int = 1,
) -> dict[str, Any]:
    """A pod spec running the workload image on ``node`` (None: on any real node): its name from the downward API, a
    readiness probe on /ready, and optionally a preStop hook that sleeps (the usual way to outlast the load balancer's
    removal)."""
    container: dict[str, Any] = {
        "name": "web",
        "image": WORKLOAD_IMAGE,
        "imagePullPolicy": "Never",
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "READY_AFTER_SECONDS", "value": str(ready_after)},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": 8080},
            "periodSeconds": probe_period,
            "failureThreshold": 1,
            "timeoutSeconds": 1,
        },
    }
    if pre_stop_sleep is not None:
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(pre_stop_sleep)]}}}
    return {
        "nodeSelector": {LABEL: "true", **({"kubernetes.io/hostname": node} if node else {})},
        "tolerations": [{"key": LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": grace,
        "containers": [container],
    }


def workload_deployment(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return deployment_of(name, replicas, workload_spec(**spec))


def workload_pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": workload_spec(**spec),
    }


def get(node: RealNodeInfo, ip: str, path: str = "/", port: int = 8080, timeout: float = 3.0) -> Reply:
    """One GET to a pod (or 127.0.0.1). Raises OSError when the connection fails (refused, reset, timed out)."""
    addr = ipaddress.ip_address(ip)
    if not (addr.is_loopback or addr in node.subnet):
        raise AssertionError(f"{ip} is neither loopback nor on the real node's bridge ({node.subnet}): not a target")
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return Reply(resp.status, resp.read().decode(errors="replace"), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def refused(node: RealNodeInfo, ip: str, port: int = 8080) -> bool:
    try:
        get(node, ip, "/healthz", port, timeout=1.0)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # a timeout or a reset: not the clean refusal of a closed port
    return False
