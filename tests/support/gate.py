"""The deletion gate's ValidatingWebhookConfiguration as the chart ships it, pointed at an operator on loopback (the
local API server runs on this machine and cannot reach a Service). The tests and the benchmarks register this one,
so that they exercise the chart's rules, failure policy and side effects, not a copy of them."""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localcluster.binaries import locate_binaries

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "alb-membership-operator"
NAME = "pod-deletion.albmembership.io"


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
