"""Shipping: the Dockerfile, the Helm chart, the plain manifests, least-privilege RBAC enforced for real, and
exactly one active replica with a measured takeover."""

from __future__ import annotations

import base64
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

from alb_membership.metrics import GATE_OUTCOMES, UNCONFIRMED
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


@pytest.mark.parametrize(
    "containerfile", ["Dockerfile", "workload/Containerfile", "operator/localcluster/pause/Containerfile"]
)
def test_dockerfile_is_hadolint_clean(containerfile: str) -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / containerfile)], capture_output=True, text=True, check=False
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


def pod_status_grants(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Every Role's and ClusterRole's verbs on pods/status, by role, counting wildcards (``*``, ``pods/*``) too."""
    grants: dict[str, set[str]] = {}
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        key = f"{role['kind']}/{role['metadata'].get('namespace', '')}/{role['metadata']['name']}"
        for rule in role.get("rules", []):
            core = {"", "*"} & set(rule.get("apiGroups", []))
            if core and {"pods/status", "pods/*", "*"} & set(rule.get("resources", [])):
                grants.setdefault(key, set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        ([], ["ClusterRole//albm-alb-membership-operator"]),
        (
            ["watchNamespaces={team-a,team-b}"],
            [f"Role/{ns}/albm-alb-membership-operator" for ns in ("team-a", "team-b")],
        ),
        (["deletionGate.enabled=true"], ["ClusterRole//albm-alb-membership-operator"]),
    ],
    ids=["cluster", "namespaces", "deletion-gate"],
)
def test_the_operator_may_patch_pod_status_and_nothing_wider(sets: list[str], where: list[str]) -> None:
    """The readiness gate's condition is the operator's only write to pods: patch of pods/status where it watches,
    no update, no other verb, no wildcard, and pods themselves stay read-only."""
    docs = render(*sets)
    assert pod_status_grants(docs) == {key: {"patch"} for key in where}
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role.get("rules", []):
            if "" in rule.get("apiGroups", []) and "pods" in rule.get("resources", []):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, "pods are never written"
            assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", [])


def test_the_plain_manifests_patch_pod_status_and_nothing_wider() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "manifests" / "operator.yaml").read_text()) if d]
    assert pod_status_grants(docs) == {"ClusterRole//alb-membership-operator": {"patch"}}


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


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_the_replicas_spread_across_nodes_unless_told_otherwise() -> None:
    term = pod_spec(render())["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "albm"
    required = pod_spec(render("podAntiAffinity=required"))["affinity"]["podAntiAffinity"]
    assert required["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert "affinity" not in pod_spec(render("podAntiAffinity=none"))
    own = pod_spec(render("affinity.podAntiAffinity.x=y", "affinity.nodeAffinity.a=b"))["affinity"]
    assert own == {"podAntiAffinity": {"x": "y"}, "nodeAffinity": {"a": "b"}}, "the user's own affinity wins"
    mixed = pod_spec(render("affinity.nodeAffinity.a=b"))["affinity"]
    assert set(mixed) == {"nodeAffinity", "podAntiAffinity"}


def test_network_policies_admit_the_webhook_from_the_api_server_and_metrics_from_a_selector() -> None:
    [base] = by_kind(render(), "NetworkPolicy")
    assert base["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [metrics] = base["spec"]["ingress"]
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    egress_ports = {p["port"] for rule in base["spec"]["egress"] for p in rule.get("ports", [])}
    assert egress_ports == {53, 443, 6443}
    gated = render(
        "deletionGate.enabled=true",
        "networkPolicy.webhook.apiServerCIDRs={192.168.0.0/24}",
        "networkPolicy.metrics.from[0].namespaceSelector.matchLabels.name=arms-prom",
        "credentials.mode=ecsRole",
    )
    base, webhook = sorted(by_kind(gated, "NetworkPolicy"), key=lambda d: d["metadata"]["name"])
    assert base["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"name": "arms-prom"}}}]
    assert {"to": [{"ipBlock": {"cidr": "100.100.100.200/32"}}], "ports": [{"port": 80, "protocol": "TCP"}]} in base[
        "spec"
    ]["egress"]
    [hook] = webhook["spec"]["ingress"]
    assert hook["ports"] == [{"port": "webhook", "protocol": "TCP"}]
    assert hook["from"][0] == {"ipBlock": {"cidr": "192.168.0.0/24"}} and "podSelector" in hook["from"][1]
    [open_port] = by_kind(render("deletionGate.enabled=true"), "NetworkPolicy")[1]["spec"]["ingress"]
    assert "from" not in open_port, "no CIDRs (ACK): the port is open, and the path token tells the API server apart"
    assert not by_kind(render("networkPolicy.enabled=false", "deletionGate.enabled=true"), "NetworkPolicy")


def render_json(*sets: str) -> list[dict[str, Any]]:
    """As render, each of ``sets`` a --set-json (a value helm --set cannot spell, such as an empty list)."""
    args = ["--set", "region=cn-hangzhou", *[a for s in sets for a in ("--set-json", s)]]
    return [d for d in yaml.safe_load_all(helm("template", "albm", str(CHART), "-n", "ops", *args).stdout) if d]


@pytest.mark.parametrize("nobody", ["[]", "null"])
def test_metrics_from_nobody_lets_nobody_in(nobody: str) -> None:
    """values.yaml: an empty networkPolicy.metrics.from lets nobody in. A rule with ports and no from would let
    everyone in: no rule at all is rendered, so the policy's Ingress admits nothing (but the node)."""
    [base] = by_kind(render_json(f"networkPolicy.metrics.from={nobody}"), "NetworkPolicy")
    assert "Ingress" in base["spec"]["policyTypes"]
    assert base["spec"].get("ingress") in (None, []), base["spec"].get("ingress")


def test_the_webhook_configuration_leaves_its_path_and_ca_to_the_operator_and_mtls_mounts_the_client_ca(
    tmp_path: Path,
) -> None:
    [config] = by_kind(render("deletionGate.enabled=true"), "ValidatingWebhookConfiguration")
    client_config = config["webhooks"][0]["clientConfig"]
    assert "path" not in client_config["service"] and "caBundle" not in client_config
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    args = [
        "--set",
        "region=cn-hangzhou",
        "--set",
        "deletionGate.enabled=true",
        "--set-file",
        f"deletionGate.clientCA={pem}",
    ]
    docs = [d for d in yaml.safe_load_all(helm("template", "albm", str(CHART), "-n", "ops", *args).stdout) if d]
    [configmap] = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("webhook-client-ca")]
    assert "BEGIN CERTIFICATE" in configmap["data"]["ca.crt"]
    container = pod_spec(docs)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-client-ca")
    assert env["ALBM_WEBHOOK_CLIENT_CA"] == mount["mountPath"] + "/ca.crt"


def test_the_alert_and_the_dashboard_count_every_unconfirmed_outcome() -> None:
    [rule] = by_kind(render("prometheusRule.enabled=true"), "PrometheusRule")
    dashboard = (CHART / "files" / "grafana-dashboard.json").read_text()
    wanted = "|".join(UNCONFIRMED)
    assert f'outcome=~"{wanted}"' in json.dumps(rule["spec"]).replace('\\"', '"')
    assert f'outcome=~\\"{wanted}\\"' in dashboard
    assert set(UNCONFIRMED) <= set(GATE_OUTCOMES)


def test_a_new_client_ca_rolls_the_pods(tmp_path: Path) -> None:
    """The server reads the client CA at start: the pods carry its checksum, so a new one is a rollout."""

    def annotations(pem: str | None, *sets: str) -> dict[str, str]:
        args = ["--set", "region=cn-hangzhou", "--set", "deletionGate.enabled=true"]
        for s in sets:
            args += ["--set", s]
        if pem is not None:
            (tmp_path / "ca.pem").write_text(pem)
            args += ["--set-file", f"deletionGate.clientCA={tmp_path / 'ca.pem'}"]
        docs = [d for d in yaml.safe_load_all(helm("template", "albm", str(CHART), *args).stdout) if d]
        return by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"].get("annotations") or {}

    one = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    two = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
    first, second = annotations(one)["checksum/webhook-client-ca"], annotations(two)["checksum/webhook-client-ca"]
    assert first != second
    assert "checksum/webhook-client-ca" not in annotations(None)
    assert annotations(one, "podAnnotations.team=platform") == {"team": "platform", "checksum/webhook-client-ca": first}


def test_the_chart_and_the_plain_manifests_pass_kube_score() -> None:
    """No NetworkPolicy, anti-affinity or other finding; the house choices (no CPU limit, IfNotPresent, no
    ephemeral-storage figures) are ignored in scripts/kube-score, and the chart README says why."""
    proc = subprocess.run([str(ROOT / "scripts" / "kube-score")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("clean:") == 5


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (["region=cn-hangzhou", "batchSize=500"], "batchSize"),
        (["region=cn-hangzhou", "credentials.mode=magic"], "credentials/mode"),
        (["region=Hangzhou"], "region"),
        (["region=cn-hangzhou", "credentials.mode=rrsa"], "credentials.rrsa.roleArn is required"),
        (["region=cn-hangzhou", "podAntiAffinity=sometimes"], "podAntiAffinity"),
        (["region=cn-hangzhou", "networkPolicy.webhook.apiServerCIDRs={the-api-server}"], "apiServerCIDRs"),
        (["region=cn-hangzhou", "deletionGate.clientCA=not-a-pem"], "clientCA"),
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
        authz = kubernetes.client.AuthorizationV1Api(as_operator)

        def may(verb: str, resource: str, subresource: str = "") -> bool:
            attrs = {"namespace": namespace, "verb": verb, "resource": resource, "subresource": subresource}
            review = {"spec": {"resourceAttributes": attrs}}
            return bool(authz.create_self_subject_access_review(review).status.allowed)

        assert may("patch", "pods", "status"), "the readiness gate's condition"
        assert not may("update", "pods", "status") and not may("patch", "pods") and not may("delete", "pods")

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
        written = admission.read_validating_webhook_configuration(fullname).webhooks[0].client_config
        token = base64.b64decode(core.read_namespaced_secret(f"{fullname}-webhook-tls", ns).data["path-token"])
        assert written.ca_bundle and written.url == f"https://127.0.0.1:{port}/validate-pod-deletion/{token.decode()}"
        assert "Forbidden" not in operator.log.read_text()
    finally:
        operator.stop()
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all([*rbac, config]))


@pytest.mark.integration
def test_the_api_server_accepts_the_network_policies(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    docs = render(
        "deletionGate.enabled=true",
        "networkPolicy.webhook.apiServerCIDRs={10.0.0.0/8,fd00::/8}",
        "credentials.mode=ecsRole",
        "endpoint=http://alb.internal:8080",
    )
    policies = by_kind(docs, "NetworkPolicy")
    for policy in policies:
        policy["metadata"]["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(policies))
    stored = kubernetes.client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    assert sorted(p.metadata.name for p in stored) == [
        "albm-alb-membership-operator",
        "albm-alb-membership-operator-webhook",
    ]
    webhook = next(p for p in stored if p.metadata.name.endswith("-webhook"))
    assert [peer.ip_block.cidr for peer in webhook.spec.ingress[0]._from if peer.ip_block] == ["10.0.0.0/8", "fd00::/8"]


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
