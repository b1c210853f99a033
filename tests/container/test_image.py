"""The shipped image, built from the Dockerfile and run the way the Helm chart runs it: read-only root filesystem,
user 65532, no capabilities, no privilege escalation, the chart's environment (credentials from its Secret), and
the in-cluster login with the chart ServiceAccount's token mounted where a pod has it. Host networking stands in
for the pod network: the API server and the emulator listen on loopback."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes
import pytest
import yaml

from localcluster.binaries import locate_binaries
from localcluster.cluster import free_port
from tests.container.podman import LABEL, OWNER, ROOT, ServiceRelay, podman, ulimits
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, EmulatorProcess
from tests.support.scenario import FOREIGN, in_group, pods_as_members, removal_requests

CHART = ROOT / "deploy" / "helm" / "alb-membership-operator"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

pytestmark = [pytest.mark.integration, pytest.mark.container, pytest.mark.timeout(1200)]


@dataclass
class Release:
    name: str
    namespace: str
    deployment: dict[str, Any]  # as the chart installed it

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]

    @property
    def container(self) -> dict[str, Any]:
        [container] = self.pod_spec["containers"]
        return container  # type: ignore[no-any-return]


@pytest.fixture
def release(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, emulator: EmulatorProcess, namespace: str, crd: None
) -> Iterator[Release]:
    """The chart installed with Helm (pointed at the emulator, watching the test's namespace), and the AccessKey
    Secret it reads the credentials from."""
    ns = f"albm-image-{uuid.uuid4().hex[:6]}"
    name = f"albm-{uuid.uuid4().hex[:4]}"
    kubeconfig = ("--kubeconfig", str(cluster.kubeconfig))
    helm = locate_binaries().helm
    sets = [f"endpoint={emulator.url}", f"watchNamespaces={{{namespace}}}", f"metrics.port={free_port()}"]
    # --take-ownership: the CRD is there already (the crd fixture), as on many real clusters.
    install = [
        str(helm),
        "install",
        name,
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--wait=false",
        "--take-ownership",
    ]
    out = _run([*install, *kubeconfig, *[a for s in sets for a in ("--set", s)]])
    assert out.returncode == 0, out.stderr
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "alb-credentials"},
            "stringData": {"accessKeyId": ACCESS_KEY_ID, "accessKeySecret": ACCESS_KEY_SECRET},
        },
    )
    fullname = f"{name}-alb-membership-operator"
    deployment = json.loads(cluster.kubectl("get", "deployment", fullname, "-n", ns, "-o", "json"))
    yield Release(name, ns, deployment)
    _run([str(helm), "uninstall", name, "-n", ns, *kubeconfig])
    core.delete_namespace(ns)


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


def service_account_dir(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, release: Release, directory: Path
) -> tuple[Path, str]:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: a token of the pod's
    ServiceAccount (TokenRequest), the cluster's CA and the namespace. Returns the directory and the token."""
    sa = release.pod_spec["serviceAccountName"]
    token = (
        kubernetes.client.CoreV1Api(api_client)
        .create_namespaced_service_account_token(sa, release.namespace, {"spec": {"expirationSeconds": 3600}})
        .status.token
    )
    [entry] = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"]
    ca = base64.b64decode(entry["cluster"]["certificate-authority-data"])
    directory.mkdir()
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(ca)
    (directory / "namespace").write_text(release.namespace)
    directory.chmod(0o755)
    for f in directory.iterdir():
        f.chmod(0o644)  # the kubelet's default mode: readable by the container's user
    return directory, token


def pod_env(release: Release, core: kubernetes.client.CoreV1Api, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it from the chart's Deployment."""
    env: dict[str, str] = {}
    for e in release.container["env"]:
        source = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": release.namespace}[path]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = core.read_namespaced_secret(ref["name"], release.namespace).data
            env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
        else:
            raise AssertionError(f"the test does not know how to set {e['name']} from {source}")
    return env


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def run_args(release: Release, sa_dir: Path, relay_ip: str) -> list[str]:
    """podman run's options for the chart's pod and container security contexts, its mounts and limits."""
    pod_sc, sc = release.pod_spec["securityContext"], release.container["securityContext"]
    # What the chart promises, so that the options below are the chart's and not the test's choice.
    assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"  # podman's default seccomp profile
    limits = release.container["resources"]["limits"]
    assert limits["memory"].endswith("Mi")
    return [
        "--label",
        LABEL,
        "--label",
        OWNER,
        "--read-only",
        "--read-only-tmpfs=false",  # no writable /tmp, /run, /var/tmp either: the chart mounts none
        "--user",
        f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}",
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        limits["memory"].removesuffix("Mi") + "m",
        "--network",
        "host",
        "--add-host",
        f"kubernetes.default.svc:{relay_ip}",
        "-v",
        f"{sa_dir}:{SA_DIR}:ro",
        *ulimits(),
    ]


def proc_status(container: str) -> dict[str, str]:
    pid = podman("inspect", "--format", "{{.State.Pid}}", container).strip()
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@dataclass
class ChartPods:
    """Containers of the image, each one replica of the chart's Deployment as the kubelet would run it."""

    image: str
    release: Release
    args: list[str]  # podman run's options (security, mounts, network, limits)
    env: dict[str, str]  # the chart's environment (without POD_NAME and the port)
    secrets: dict[str, str]  # what must never appear in the output: what -> value
    started: list[str]

    @property
    def grace(self) -> int:
        return int(self.release.pod_spec["terminationGracePeriodSeconds"])

    def start(self, name: str, port: int) -> None:
        env = {**self.env, "POD_NAME": name, "ALBM_METRICS_PORT": str(port)}
        # Values travel through podman's own environment (`-e NAME`), never on a command line.
        names = [a for k in sorted(env) for a in ("-e", k)]
        self.started.append(name)
        podman("run", "-d", "--name", name, *self.args, *names, self.image, env={**os.environ, **env})

    def logs(self, name: str) -> str:
        """stdout and stderr, as `kubectl logs` shows them."""
        return podman("logs", name, check=False)

    def redacted(self, text: str) -> str:
        """For failure messages, which must not leak what the test asserts is never printed."""
        for what, value in self.secrets.items():
            text = text.replace(value, f"<{what}>")
        return text

    def wait_ready(self, name: str, port: int, leader: bool) -> float:
        """Seconds from now until /readyz answers 200 with the given leadership."""
        start = time.monotonic()

        def ready() -> bool:
            if podman("inspect", "--format", "{{.State.Running}}", name).strip() != "true":
                raise AssertionError(f"the container exited:\n{self.redacted(self.logs(name))[-3000:]}")
            status, body = http_get(port, "/readyz")
            return status == 200 and json.loads(body)["leader"] is leader

        wait_for(ready, f"/readyz of {name}: 200, leader {leader}", timeout=90)
        return time.monotonic() - start

    def stop(self, name: str) -> tuple[float, int]:
        """The kubelet's stop: SIGTERM, then SIGKILL after the grace period. Returns (seconds, exit code)."""
        start = time.monotonic()
        podman("stop", "--time", str(self.grace), name, timeout=self.grace + 30)
        took = time.monotonic() - start
        return took, int(json.loads(podman("inspect", name))[0]["State"]["ExitCode"])


@pytest.fixture
def pods(
    image: str,
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    release: Release,
    tmp_path: Path,
) -> Iterator[ChartPods]:
    api = urlsplit(yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    assert api.hostname and api.port
    # A loopback address of its own for the Service address, so nothing else on the machine holds its port 443.
    relay_ip = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    try:
        relay = ServiceRelay((relay_ip, 443), (api.hostname, api.port))
    except PermissionError:
        pytest.fail("the stand-in for kubernetes.default.svc listens on port 443: run the tests as root", pytrace=False)
    sa_dir, token = service_account_dir(cluster, api_client, release, tmp_path / "serviceaccount")
    env = {
        **pod_env(release, kubernetes.client.CoreV1Api(api_client), pod_name="set-per-container"),
        # What the kubelet sets for the `kubernetes` Service; here the API server's own address.
        "KUBERNETES_SERVICE_HOST": api.hostname,
        "KUBERNETES_SERVICE_PORT": str(api.port),
        # In a pod the port is on the pod's own network; on the host's network, keep it on loopback.
        "ALBM_LISTEN_ADDRESS": "127.0.0.1",
    }
    secrets = {"AccessKey secret": ACCESS_KEY_SECRET, "ServiceAccount token": token}
    chart_pods = ChartPods(image, release, run_args(release, sa_dir, relay_ip), env, secrets, [])
    try:
        yield chart_pods
    finally:
        if chart_pods.started:
            podman("rm", "-f", "--ignore", "-t", "0", *chart_pods.started, check=False)
        relay.close()


def test_the_image_runs_as_the_chart_runs_it(
    cluster: Cluster,  # first: the local cluster starts while the image builds
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    image: str,
    pods: ChartPods,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    config = json.loads(podman("image", "inspect", image))[0]["Config"]
    assert config["User"] == "65532:65532", "the image itself runs as non-root"

    name, port = f"albm-test-{uuid.uuid4().hex[:8]}", int(pods.env["ALBM_METRICS_PORT"])
    pods.start(name, port)
    ready_after = pods.wait_ready(name, port, leader=True)  # the Lease, through KUBERNETES_SERVICE_HOST
    status, metrics = http_get(port, "/metrics")
    assert status == 200 and "albm_leader 1.0" in metrics and "albm_api_calls_total" in metrics

    st = proc_status(name)
    assert st["Uid"].split() == ["65532"] * 4 and st["Gid"].split() == ["65532"] * 4
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0, "no capabilities at all"
    assert st["NoNewPrivs"] == "1"

    # End to end: kopf's watch (kubernetes.default.svc), the ALB call (the emulator), status and Events.
    ips = pods_as_members(cluster, core, emulator, namespace, 2)
    victim, stays = sorted(ips)
    core.delete_namespaced_pod(victim, namespace)
    wait_for(lambda: ips[victim] not in in_group(emulator), "the terminating pod's server to leave the group")
    assert in_group(emulator) == {ips[stays], FOREIGN}
    assert [r["servers"] for r in removal_requests(emulator) if r["code"] == "OK"] == [[ips[victim]]]

    stopped_after, exit_code = pods.stop(name)
    print(
        f"\nimage {image}: ready (and leader) {ready_after:.1f}s after `podman run`;"
        f" stopped {stopped_after:.1f}s after SIGTERM (grace {pods.grace}s), exit code {exit_code}"
    )
    logs = pods.logs(name)
    assert exit_code == 0, f"SIGTERM did not stop it cleanly (exit code {exit_code}):\n{pods.redacted(logs)[-3000:]}"
    assert stopped_after < pods.grace
    for what, secret in pods.secrets.items():
        # The whole value, and its end (a token's signature) in case something prints it cut short.
        assert secret not in logs and secret[-16:] not in logs, f"the {what} appears in the container's output"
    assert "Read-only file system" not in logs
    assert "Forbidden" not in logs, "the chart's RBAC must be enough"

    # Nothing written: the diff of the stopped container is what the runtime itself made (mount points for
    # /etc/hosts and the ServiceAccount directory), the same as for a container that ran nothing at all.
    baseline = f"{name}-baseline"
    pods.started.append(baseline)
    podman("run", "--name", baseline, *pods.args, "--entrypoint", "true", image)
    assert podman("diff", name) == podman("diff", baseline)
    assert json.loads(podman("inspect", name))[0]["HostConfig"]["ReadonlyRootfs"] is True


def test_a_standby_replica_stops_on_sigterm(pods: ChartPods) -> None:
    """The chart runs 2 replicas: the one waiting for the Lease must stop on SIGTERM too (rolling updates)."""
    leader, standby = f"albm-test-{uuid.uuid4().hex[:8]}", f"albm-test-{uuid.uuid4().hex[:8]}"
    leader_port, standby_port = int(pods.env["ALBM_METRICS_PORT"]), free_port()
    pods.start(leader, leader_port)
    pods.wait_ready(leader, leader_port, leader=True)
    pods.start(standby, standby_port)
    pods.wait_ready(standby, standby_port, leader=False)
    stopped_after, exit_code = pods.stop(standby)
    print(f"\nstandby replica: stopped {stopped_after:.1f}s after SIGTERM (grace {pods.grace}s), exit code {exit_code}")
    assert exit_code == 0 and stopped_after < pods.grace, f"exit code {exit_code} after {stopped_after:.1f}s"
