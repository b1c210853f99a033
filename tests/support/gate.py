"""The deletion gate's ValidatingWebhookConfiguration as the chart ships it, pointed at an operator on loopback (the
local API server runs on this machine and cannot reach a Service). The tests and the benchmarks register this one,
so that they exercise the chart's rules, failure policy and side effects, not a copy of them."""

from __future__ import annotations

import base64
import copy
import functools
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from localcluster.binaries import locate_binaries
from localcluster.cluster import free_port
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.operator import OperatorProcess, start_operator
from tests.support.scenario import FOREIGN, GROUP, apply, deployment, pod_ips, sgm, status_when

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "alb-membership-operator"
NAME = "pod-deletion.albmembership.io"
GATE = {"enabled": True, "maxWaitSeconds": 20}
GATE_JOB_SECONDS = 1.0  # the emulator's job time in gated tests: a hold is seen to wait for it


@functools.cache
def _chart_configuration() -> dict[str, Any]:
    out = subprocess.run(
        [str(locate_binaries().helm), "template", "albm", str(CHART), "--set", "region=cn-hangzhou",
         "--set", "deletionGate.enabled=true", "--show-only", "templates/webhook.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [config] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ValidatingWebhookConfiguration"]
    return config  # type: ignore[no-any-return]


def served_at(config: dict[str, Any], port: int, namespace: str, timeout: int | None = None) -> dict[str, Any]:
    """``config`` (a copy) calling https://127.0.0.1:``port``/validate-pod-deletion for pods of ``namespace`` only,
    with ``timeout`` seconds when given. The operator named in it (``--webhook-configuration``) rewrites the path to
    /validate-pod-deletion/<its token> as it writes its CA: until then the API server's calls get a 404."""
    out = copy.deepcopy(config)
    [webhook] = out["webhooks"]
    assert webhook["name"] == NAME, webhook["name"]
    webhook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/validate-pod-deletion"}
    webhook["namespaceSelector"] = {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]
    }
    if timeout is not None:
        webhook["timeoutSeconds"] = timeout
    return out


def webhook_configuration(name: str, namespace: str, port: int, timeout: int = 30) -> dict[str, Any]:
    """The chart's configuration named ``name``, for an operator whose webhook listens on loopback ``port`` and
    gates the pods of ``namespace``."""
    config = served_at(_chart_configuration(), port, namespace, timeout)
    config["metadata"] = {"name": name}
    return config


class Gated:
    """A namespace with gated members, the webhook registered, and operators serving it."""

    def __init__(self, cluster: Cluster, api_client: Any, emulator: EmulatorProcess, namespace: str, tmp: Path):
        self.cluster, self.emulator, self.namespace, self.tmp = cluster, emulator, namespace, tmp
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
        self.name = f"albm-gate-{namespace[-6:]}"
        self.operators: list[OperatorProcess] = []

    def operator(self, port: int, *extra: str) -> OperatorProcess:
        op = start_operator(
            self.cluster.kubeconfig, self.emulator.url, self.namespace, self.tmp,
            "--webhook-port", str(port), "--webhook-hosts", "127.0.0.1",
            "--webhook-secret", "albm-webhook-tls", "--webhook-configuration", self.name,
            "--leader-election-namespace", self.namespace, *extra,
        )  # fmt: skip
        self.operators.append(op)
        return op

    def register(self, port: int, timeout: int = 30) -> None:
        self.admission.create_validating_webhook_configuration(
            webhook_configuration(self.name, self.namespace, port, timeout)
        )

    def serving(self) -> OperatorProcess:
        """The webhook registered first, as the chart installs it, then an operator serving it, which puts its CA
        into the configuration at start."""
        port = free_port()
        self.register(port)
        op = self.operator(port)
        self.trusted()
        return op

    def trusted(self) -> None:
        """The operator put its CA into the configuration."""

        def ca() -> str | None:
            config = self.admission.read_validating_webhook_configuration(self.name)
            return config.webhooks[0].client_config.ca_bundle

        bundle = wait_for(ca, "the caBundle written by the operator", timeout=30)
        assert b"BEGIN CERTIFICATE" in base64.b64decode(bundle)

    def members(
        self, replicas: int, gate: dict[str, Any] | None = None, weight: int = 100, **spec: Any
    ) -> dict[str, str]:
        """``weight``: the pods' servers' weight in the group; ``spec``: more of the group (the emulator's)."""
        apply(self.cluster, self.namespace, deployment("web", replicas))
        ips = pod_ips(self.core, self.namespace, "web", replicas)
        self.emulator.add_group(GROUP, [server(ip, weight=weight) for ip in ips.values()] + [server(FOREIGN)], **spec)
        apply(
            self.cluster,
            self.namespace,
            sgm(
                "web",
                podSelector={"matchLabels": {"app": "web"}},
                backend={"serverType": "Ip", "port": 8080},
                deletionGate=gate or GATE,
            ),
        )
        status_when(self.cluster, self.namespace, lambda s: s.get("memberCount") == replicas, "members recorded")
        return ips

    def token(self) -> str:
        """The path token the operator keeps in its TLS Secret (what only the API server and the replicas know)."""
        data = self.core.read_namespaced_secret("albm-webhook-tls", self.namespace).data
        return base64.b64decode(data["path-token"]).decode()

    def delete(self, name: str) -> tuple[float, float, str]:
        """``kubectl delete pod`` (no wait): when it was sent, when the API server answered, and what kubectl
        printed on stderr (the gate's warning)."""
        started = time.time()
        done = subprocess.run(
            [str(self.cluster.kubectl_bin), f"--kubeconfig={self.cluster.kubeconfig}", "delete", "pod", name,
             "-n", self.namespace, "--wait=false"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return started, time.time(), done.stderr

    def out_at(self, ip: str) -> float:
        [record] = self.emulator.admin("GET", f"server-groups/{GROUP}/history?server_id={ip}")
        return float(record["out_of_rotation_at"])

    def close(self) -> None:
        for op in self.operators:
            op.stop()
        self.admission.delete_validating_webhook_configuration(self.name)
