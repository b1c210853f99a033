"""The deletion gate's hold time for one gated deletion, and how a forged review is answered (issue 17).

A local cluster (one kwok node), the ALB emulator (jobs of --job-seconds, no draining) and the operator with its
webhook, registered as tests/integration/test_gate.py registers it (the chart's configuration at a URL: the local
API server cannot reach a Service). A Deployment of --pods members of one gated ServerGroupMembership: the first
is the forged review's target, the others are deleted with `kubectl delete pod --wait=false`, one after another,
and per deletion the harness records:

  hold          how long kubectl's DELETE took (the API server's round trip with the webhook's hold in it)
  gate's figure the "held X.Xs" of the warning the gate answers with, as kubectl prints it
  out after     the emulator's out_of_rotation_at minus the DELETE's start

Modes: `leader` (the API server asks the replica that acts) and `standby` (two replicas with --leader-elect, the
API server asks the standby, which forwards to the leader). Prints the median and the spread per mode, and the
answer to a forged review posted straight to the webhook port, at the path the API server used before issue 17.

    .venv/bin/python bench/gate_hold.py --pods 8 --modes leader,standby
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))
from tests.support.cluster import Cluster, wait_for  # noqa: E402
from tests.support.emulator import server, start_emulator  # noqa: E402
from tests.support.gate import webhook_configuration  # noqa: E402
from tests.support.operator import OperatorProcess, start_operator  # noqa: E402
from tests.support.scenario import FOREIGN, GROUP, apply, deployment, pod_ips, sgm, status_when  # noqa: E402

from localcluster import LocalCluster  # noqa: E402
from localcluster.binaries import locate_binaries  # noqa: E402
from localcluster.cluster import free_port  # noqa: E402

HELD = re.compile(r"held (\d+\.\d+)s")
NAME = "albm-bench-hold"


def forged(port: int, namespace: str, pod: dict[str, Any]) -> str:
    """A hand-written AdmissionReview for a live member, its oldObject as `kubectl get pod -o json` shows it,
    posted at the path the API server used before issue 17."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "forged-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "DELETE",
            "namespace": namespace,
            "name": pod["metadata"]["name"],
            "oldObject": pod,
        },
    }
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/validate-pod-deletion",
        data=json.dumps(review).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as resp:
            return f"HTTP {resp.status}: {resp.read().decode()[:200]}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read().decode()[:200]}"


def run_mode(cluster: Cluster, core: Any, admission: Any, emulator: Any, tmp: Path, mode: str, pods: int) -> dict:
    namespace = f"bench-hold-{mode}-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": namespace}})
    operators: list[OperatorProcess] = []
    try:
        ports = [free_port(), free_port()]

        def operator(port: int, *extra: str) -> OperatorProcess:
            op = start_operator(
                cluster.kubeconfig, emulator.url, namespace, tmp,
                "--webhook-port", str(port), "--webhook-hosts", "127.0.0.1", "--webhook-secret", "albm-webhook-tls",
                "--webhook-configuration", NAME, "--leader-election-namespace", namespace, *extra,
            )  # fmt: skip
            operators.append(op)
            return op

        if mode == "leader":
            operator(ports[0])
            asked = ports[0]
        else:
            ha = ("--leader-elect",)
            first = operator(ports[0], *ha, "--webhook-advertise", f"https://127.0.0.1:{ports[0]}")
            wait_for(lambda: first.ready()["leader"], "the first replica to lead")
            operator(ports[1], *ha, "--webhook-advertise", f"https://127.0.0.1:{ports[1]}")
            asked = ports[1]
        admission.create_validating_webhook_configuration(webhook_configuration(NAME, namespace, asked))
        wait_for(
            lambda: admission.read_validating_webhook_configuration(NAME).webhooks[0].client_config.ca_bundle,
            "the caBundle",
            timeout=30,
        )
        time.sleep(3)  # the API server reads webhook configurations through its own watch
        apply(cluster, namespace, deployment("web", pods))
        ips = pod_ips(core, namespace, "web", pods)
        emulator.add_group(GROUP, [server(ip) for ip in ips.values()] + [server(FOREIGN)])
        apply(
            cluster,
            namespace,
            sgm(
                "web",
                podSelector={"matchLabels": {"app": "web"}},
                backend={"serverType": "Ip", "port": 8080},
                deletionGate={"enabled": True, "maxWaitSeconds": 20},
            ),
        )
        status_when(cluster, namespace, lambda s: s.get("memberCount") == pods, "members recorded")
        victims = sorted(ips)
        pod = json.loads(cluster.kubectl("get", "pod", victims[0], "-n", namespace, "-o", "json"))
        before = {s["ServerId"] for s in emulator.group(GROUP)["Servers"]}
        forged_answer = forged(asked, namespace, pod)
        time.sleep(1.5)
        after = {s["ServerId"] for s in emulator.group(GROUP)["Servers"]}
        forged_effect = "the group unchanged" if before == after else f"removed {sorted(before - after)}"
        holds, figures, outs = [], [], []
        for name in victims[1:]:  # the first one was the forgery's target
            started = time.time()
            done = subprocess.run(
                [str(cluster.kubectl_bin), f"--kubeconfig={cluster.kubeconfig}", "delete", "pod", name, "-n",
                 namespace, "--wait=false"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            holds.append(time.time() - started)
            match = HELD.search(done.stderr)  # kubectl prints the webhook's warning on stderr
            if match:
                figures.append(float(match.group(1)))
            [record] = emulator.admin("GET", f"server-groups/{GROUP}/history?server_id={ips[name]}")
            if record.get("out_of_rotation_at"):
                outs.append(float(record["out_of_rotation_at"]) - started)
        return {
            "mode": mode,
            "holds": holds,
            "gate_figures": figures,
            "out_after": outs,
            "forged": forged_answer,
            "forged_effect": forged_effect,
        }
    finally:
        for op in operators:
            op.stop()
        with contextlib.suppress(kubernetes.client.ApiException):
            admission.delete_validating_webhook_configuration(NAME)
        core.delete_namespace(namespace)


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f}s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--modes", default="leader,standby")
    parser.add_argument("--job-seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="albm-gate-hold-") as tmp_dir:
        tmp = Path(tmp_dir)
        local = LocalCluster(state_dir=tmp / "cluster", nodes=1)
        local.start()
        emulator = start_emulator(tmp)
        try:
            cluster = Cluster(local.kubeconfig, locate_binaries().kubectl)
            cluster.kubectl("apply", "-f", str(ROOT / "crds"))
            cluster.kubectl(
                "wait", "--for=condition=Established", "--timeout=30s", "crd/servergroupmemberships.albmembership.io"
            )
            api = cluster.api_client()
            core = kubernetes.client.CoreV1Api(api)
            admission = kubernetes.client.AdmissionregistrationV1Api(api)
            for mode in args.modes.split(","):
                emulator.admin("POST", "reset")
                emulator.admin("PUT", "behaviour", {"job_seconds": args.job_seconds})
                result = run_mode(cluster, core, admission, emulator, tmp, mode, args.pods)
                print(f"{mode}: kubectl delete held {summary(result['holds'])}")
                print(f"{mode}: the gate's own figure {summary(result['gate_figures'])}")
                print(f"{mode}: out of rotation after {summary(result['out_after'])}")
                print(f"{mode}: forged review at the old path: {result['forged']} -> {result['forged_effect']}")
                print(json.dumps(result), file=sys.stderr)
        finally:
            emulator.stop()
            local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
