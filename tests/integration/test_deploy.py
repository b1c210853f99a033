"""Shipping: the Dockerfile, the Helm chart, the plain manifests, least-privilege RBAC enforced for real, and
exactly one active replica with a measured takeover."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException

from localcluster.binaries import locate_binaries
from localcluster.cluster import free_port
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess
from tests.support.gate import served_at
from tests.support.operator import OperatorProcess, start_operator
from tests.support.scenario import (
    in_group,
    pods_as_members,
    removal_requests,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "alb-membership-operator"
BIN = Path(sys.executable).parent


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(locate_binaries().helm), *args], capture_output=True, text=True, check=check)


def render(*sets: str) -> list[dict[str, Any]]:
    args = [a for s in ("region=cn-hangzhou", *sets) for a in ("--set", s)]
    return [d for d in yaml.safe_load_all(helm("template", "albm", str(CHART), "-n", "ops", *args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# -- static checks --------------------------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    lock = (ROOT / "deploy" / "requirements.lock").read_text().lower()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = dep.split("~")[0].split(">")[0].split("=")[0].strip().lower().replace("_", "-")
        assert f"\n{name}==" in lock.replace("_", "-"), f"{name} is not pinned in deploy/requirements.lock"
    assert "--hash=sha256:" in lock


def test_chart_lints_and_renders_with_least_privilege() -> None:
    lint = helm("lint", str(CHART), "--set", "region=cn-hangzhou", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render()
    [role] = by_kind(docs, "ClusterRole")
    verbs = {(r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]}
    assert verbs[("", "pods")] == {"get", "list", "watch"}, "pods are never written"
    assert ("", "secrets") not in verbs
    assert verbs[("", "events")] == {"create"}
    [dep] = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in container["env"]}
    assert env["ALIBABA_CLOUD_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "alb-credentials"
    assert env["ALBM_LEADER_ELECT"]["value"] == "true" and env["ALBM_LOG_FORMAT"]["value"] == "json"
    assert by_kind(docs, "PodDisruptionBudget") and by_kind(docs, "Service") and not by_kind(docs, "ServiceMonitor")
    [crd] = by_kind(docs, "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_chart_options() -> None:
    scoped = render("watchNamespaces={team-a,team-b}")
    assert not by_kind(scoped, "ClusterRole")
    assert {r["metadata"]["namespace"] for r in by_kind(scoped, "Role")} == {"team-a", "team-b", "ops"}
    rrsa = render(
        "credentials.mode=rrsa",
        "credentials.rrsa.roleArn=acs:ram::123:role/albm",
        "credentials.rrsa.oidcProviderArn=acs:ram::123:oidc-provider/ack-rrsa-c1",
    )
    pod = by_kind(rrsa, "Deployment")[0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ALIBABA_CLOUD_ROLE_ARN"] == "acs:ram::123:role/albm"
    assert pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "sts.aliyuncs.com"
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" not in env
    ecs = by_kind(render("credentials.mode=ecsRole", "credentials.ecsRole.roleName=albm-node"), "Deployment")[0]
    assert {"name": "ALIBABA_CLOUD_ECS_METADATA", "value": "albm-node"} in ecs["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    assert by_kind(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    single = by_kind(render("leaderElection.enabled=false", "replicaCount=1"), "Deployment")[0]
    assert single["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (["region=cn-hangzhou", "batchSize=500"], "batchSize"),
        (["region=cn-hangzhou", "credentials.mode=magic"], "credentials/mode"),
        (["region=Hangzhou"], "region"),
        (["region=cn-hangzhou", "credentials.mode=rrsa"], "credentials.rrsa.roleArn is required"),
        ([], "set region"),
    ],
)
def test_chart_refuses_bad_values(sets: list[str], complaint: str) -> None:
    proc = helm("template", "albm", str(CHART), *[a for s in sets for a in ("--set", s)], check=False)
    assert proc.returncode != 0
    assert complaint in proc.stderr


def test_plain_manifests_match_the_chart() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate-manifests"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (ROOT / "crds" / "servergroupmemberships.albmembership.io.yaml").read_text() == (
        CHART / "files" / "servergroupmemberships.albmembership.io.yaml"
    ).read_text()


# -- on the cluster -----------------------------------------------------------------------------------------------


def token_kubeconfig(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, sa: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount, with a token from the TokenRequest API."""
    token = (
        kubernetes.client.CoreV1Api(api_client)
        .create_namespaced_service_account_token(sa, namespace, {"spec": {"expirationSeconds": 3600}})
        .status.token
    )
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "sa", "user": {"token": token}}]
    admin["contexts"] = [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}]
    admin["current-context"] = "sa"
    path.write_text(yaml.safe_dump(admin))
    return path


def as_kubeconfig(path: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(path))


@pytest.fixture
def release(cluster: Cluster, api_client: kubernetes.client.ApiClient) -> Iterator[tuple[str, str]]:
    """The chart installed with Helm in a namespace of its own: (release, namespace)."""
    ns = f"albm-system-{uuid.uuid4().hex[:6]}"
    name = f"albm-{uuid.uuid4().hex[:4]}"
    out = helm(
        "install",
        name,
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--set",
        "region=cn-hangzhou",
        "--wait=false",
        # The CRD may be there already (other tests applied it with kubectl), as on many real clusters.
        "--take-ownership",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    yield name, ns
    helm("uninstall", name, "-n", ns, "--kubeconfig", str(cluster.kubeconfig), check=False)
    kubernetes.client.CoreV1Api(api_client).delete_namespace(ns)


@pytest.mark.integration
def test_helm_install_then_the_operator_works_with_only_the_charts_rights(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    release: tuple[str, str],
    tmp_path: Path,
) -> None:
    name, ns = release
    fullname = f"{name}-alb-membership-operator"
    apps = kubernetes.client.AppsV1Api(api_client)
    wait_for(
        lambda: (apps.read_namespaced_deployment(fullname, ns).status.ready_replicas or 0) == 2,
        "the chart's 2 replicas to run (kwok plays the kubelet)",
    )
    crd = json.loads(cluster.kubectl("get", "crd", "servergroupmemberships.albmembership.io", "-o", "json"))
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    kubeconfig = token_kubeconfig(cluster, api_client, ns, fullname, tmp_path / "sa.kubeconfig")
    with as_kubeconfig(kubeconfig) as as_operator:
        core = kubernetes.client.CoreV1Api(as_operator)
        assert core.list_namespaced_pod(namespace).items == []
        with pytest.raises(ApiException) as secrets:
            core.list_namespaced_secret(namespace)
        assert secrets.value.status == 403
        with pytest.raises(ApiException) as pods:
            core.create_namespaced_pod(
                namespace, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
            )
        assert pods.value.status == 403
        with pytest.raises(ApiException) as lease_elsewhere:
            kubernetes.client.CoordinationV1Api(as_operator).create_namespaced_lease(
                namespace, {"metadata": {"name": "x"}, "spec": {}}
            )
        assert lease_elsewhere.value.status == 403

    # The deletion gate's rights as the chart gives them with deletionGate.enabled (its RBAC, applied beside the
    # release; the webhook configuration at a URL, since the local API server cannot reach a Service).
    gate = yaml.safe_load_all(
        helm("template", name, str(CHART), "-n", ns, "--set", "region=cn-hangzhou", "--set",
             "deletionGate.enabled=true", "--show-only", "templates/webhook.yaml").stdout
    )  # fmt: skip
    docs = [d for d in gate if d]
    rbac = [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    port = free_port()
    [config] = [served_at(d, port, namespace) for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([*rbac, config]))

    # The operator, as a process, with exactly the chart's ServiceAccount rights (and its Lease).
    core = kubernetes.client.CoreV1Api(api_client)
    operator = start_operator(
        kubeconfig,
        emulator.url,
        namespace,
        tmp_path,
        "--leader-elect",
        "--leader-election-namespace",
        ns,
        "--leader-election-name",
        fullname,
        "--webhook-port",
        str(port),
        "--webhook-hosts",
        "127.0.0.1",
        "--webhook-secret",
        f"{fullname}-webhook-tls",
        "--webhook-configuration",
        fullname,
    )
    try:
        ips = pods_as_members(cluster, core, emulator, namespace, 2)
        victim = sorted(ips)[0]
        core.delete_namespaced_pod(victim, namespace)  # through the webhook: not gated, answered at once
        wait_for(lambda: ips[victim] not in in_group(emulator), "the removal, under least privilege")
        assert core.read_namespaced_secret(f"{fullname}-webhook-tls", ns).data["ca.crt"]
        admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
        assert admission.read_validating_webhook_configuration(fullname).webhooks[0].client_config.ca_bundle
        assert "Forbidden" not in operator.log.read_text()
    finally:
        operator.stop()
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all([*rbac, config]))


@pytest.mark.integration
def test_kubectl_apply_k_installs_the_plain_manifests(
    cluster: Cluster, api_client: kubernetes.client.ApiClient
) -> None:
    out = cluster.kubectl("apply", "-k", str(ROOT / "deploy" / "manifests"))
    assert "deployment.apps/alb-membership-operator" in out
    try:
        wait_for(
            lambda: (
                (
                    kubernetes.client.AppsV1Api(api_client)
                    .read_namespaced_deployment("alb-membership-operator", "alb-membership-system")
                    .status.ready_replicas
                    or 0
                )
                == 2
            ),
            "2 replicas",
        )
    finally:
        # Not `delete -k`: that would delete the CRD, and with it every ServerGroupMembership in the cluster.
        for f in ("operator.yaml", "namespace.yaml"):
            cluster.kubectl(
                "delete", "--wait=false", "--ignore-not-found", "-f", str(ROOT / "deploy" / "manifests" / f)
            )


# -- one active replica ---------------------------------------------------------------------------------------------


def leader_of(operators: list[OperatorProcess]) -> list[OperatorProcess]:
    leaders = []
    for op in operators:
        if op.process.poll() is not None:
            continue
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/readyz", timeout=2) as resp:
            if json.loads(resp.read())["leader"]:
                leaders.append(op)
    return leaders


@pytest.mark.integration
def test_two_replicas_remove_once_and_hand_over(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    tmp_path: Path,
    crd: None,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    ha = ("--leader-elect", "--leader-election-namespace", namespace)
    first = start_operator(cluster.kubeconfig, emulator.url, namespace, tmp_path, *ha)
    second = start_operator(cluster.kubeconfig, emulator.url, namespace, tmp_path, *ha)
    replicas = [first, second]
    try:
        [leader] = wait_for(lambda: (found := leader_of(replicas)) and len(found) == 1 and found, "one leader")
        standby = second if leader is first else first
        assert "albm_leader 0.0" in standby.metrics() and "albm_leader 1.0" in leader.metrics()
        ips = pods_as_members(cluster, core, emulator, namespace, 3)
        a, b, c = sorted(ips)
        core.delete_namespaced_pod(a, namespace)
        wait_for(lambda: ips[a] not in in_group(emulator), "the first removal")

        leader.kill()
        killed = time.monotonic()
        # Deleted while nobody leads: the standby's own watches see it, so it acts as soon as it takes over.
        core.delete_namespaced_pod(b, namespace)
        wait_for(lambda: leader_of([standby]), "the standby to take over", timeout=60, interval=0.05)
        led_at = time.time()
        takeover = time.monotonic() - killed
        print(f"\ntakeover after SIGKILL of the leader: {takeover:.1f}s")
        assert takeover < 30
        wait_for(lambda: ips[b] not in in_group(emulator), "the removal by the new leader")
        [sent] = [r["time"] for r in removal_requests(emulator) if ips[b] in r["servers"] and r["code"] == "OK"]
        print(f"first removal {sent - led_at:.2f}s after taking over")
        assert sent - led_at < 1.0, "the standby's view was current: it acted within a second of leading"
        # A replica killed between the job's end and its status write leaves the removal pending: its successor
        # sends it again with the same token and the cloud answers with the same job. Exactly once means: one
        # job per server, two jobs in all.
        jobs_per_server: dict[str, set[str]] = {}
        for r in removal_requests(emulator):
            if r["code"] == "OK":
                for ip in r["servers"]:
                    jobs_per_server.setdefault(ip, set()).add(r["job_id"])
        assert {ip: len(j) for ip, j in jobs_per_server.items()} == {ips[a]: 1, ips[b]: 1}
        assert len(emulator.admin("GET", "jobs")) == 2
        assert ips[c] in in_group(emulator)

        # A clean shutdown (SIGTERM, as on a rolling update) gives the Lease up: no waiting for it to expire.
        third = start_operator(cluster.kubeconfig, emulator.url, namespace, tmp_path, *ha)
        replicas.append(third)
        assert leader_of([third]) == []
        standby.process.terminate()
        stopped = time.monotonic()
        wait_for(lambda: leader_of([third]), "the third replica to take over", timeout=60)
        graceful = time.monotonic() - stopped
        print(f"takeover after SIGTERM of the leader: {graceful:.1f}s")
        assert graceful < 10
    finally:
        for op in replicas:
            op.stop()
