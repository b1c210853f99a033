"""Starts and stops one local control plane: etcd, kube-apiserver, controller-manager, scheduler and kwok, and
optionally real nodes (a kubelet and a containerd each: localcluster/realnode.py) beside kwok's.

Every component listens on a free loopback port and keeps its files (PKI, data, logs, kubeconfig) in one
state directory, so several clusters can run side by side and ``down`` needs nothing but that directory.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from localcluster import realnode
from localcluster.binaries import Binaries, locate_binaries
from localcluster.certs import WEBHOOK_CLIENT_CA, write_pki
from localcluster.errors import ClusterError
from localcluster.images import node_images
from localcluster.realnode import RealNode

STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
# The controller-manager runs only what the tests need of a real cluster: EndpointSlices for Services
# (endpointslice), namespace deletion (namespace, garbage-collector), Deployments' ReplicaSets and pods (deployment,
# replicaset), each namespace's default ServiceAccount (serviceaccount), and PodDisruptionBudgets' status
# (disruption): without it no budget gets a status and the API server refuses every eviction under one (429).
# The disruption controller finds a pod's Deployment, ReplicaSet, StatefulSet or ReplicationController from its
# informers (a scale subresource only for other owners) and needs neither a kubelet nor another controller; the
# controller-manager's admin credentials let it read them and write the budgets' status.
KCM_CONTROLLERS = (
    "endpointslice-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "disruption-controller",
)
# What watches the API server through client-go's reflectors. Those retry a broken watch with a backoff that
# doubles from 0.8 s to 30 s, plus up to as much again in jitter, and is reset only after two quiet minutes: after
# an API server restart or two, they would sleep through most of a minute before they watch again, and a new
# Deployment would get no pod (measured: 69 s for the first pod after three restarts). So they restart with it.
API_CLIENTS = ("kube-controller-manager", "kube-scheduler", "kwok")  # and every real node's kubelet
# kwok manages the nodes it made (the annotation _create_nodes gives them) and the pods on them, never a real node:
# with --manage-all-nodes it reported a real node's pods Running and Ready while their sandboxes had failed.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    # Test clusters must not outlive a test run that is killed outright (SIGKILL leaves no teardown).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Component:
    name: str
    pid: int
    log: str
    argv: list[str] = field(default_factory=list)


@dataclass
class LocalCluster:
    state_dir: Path
    nodes: int = 2
    # Nodes with a kubelet and a containerd of their own (real-node-0, ...): pods on them run as processes, with
    # probes, hooks and signals (localcluster/realnode.py). They need root, containerd, runc and the CNI plugins:
    # realnode.problems() says what is missing.
    real_nodes: int = 0
    # Detached clusters (``local-cluster up``) outlive the command that started them; attached ones (tests)
    # die with their parent process even when it is killed.
    detached: bool = False
    binaries: Binaries | None = None
    apiserver_port: int = 0
    etcd_port: int = 0
    components: list[Component] = field(default_factory=list)
    real: list[RealNode] = field(default_factory=list)
    # How long the real nodes took: start (containerd, images, kubelet, Ready) and stop, in seconds.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def webhook_client_ca(self) -> Path:
        """The CA of the client certificate the API server presents to webhooks (localcluster/certs.py)."""
        return self.state_dir / "pki" / WEBHOOK_CLIENT_CA

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0, progress: Callable[[str], None] = lambda _: None) -> None:
        bins = self.binaries = self.binaries or locate_binaries()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pki = self.state_dir / "pki"
        write_pki(pki)
        token = secrets.token_hex(24)
        (pki / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
        (pki / "tokens.csv").chmod(0o600)
        self.etcd_port, self.apiserver_port = free_port(), free_port()
        self._write_kubeconfig(token)
        deadline = time.monotonic() + timeout
        try:
            progress(f"etcd on 127.0.0.1:{self.etcd_port}")
            self._spawn(
                "etcd",
                [
                    str(bins.etcd),
                    f"--data-dir={self.state_dir / 'etcd'}",
                    "--name=default",
                    f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
            )
            self._wait_http("etcd", f"http://127.0.0.1:{self.etcd_port}/health", deadline)

            progress(f"kube-apiserver on {self.server}")
            self._spawn(
                "kube-apiserver",
                [
                    str(bins.kube_apiserver),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.apiserver_port}",
                    "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none",
                    f"--tls-cert-file={pki / 'server.crt'}",
                    f"--tls-private-key-file={pki / 'server.key'}",
                    f"--cert-dir={self.state_dir / 'certs'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--token-auth-file={pki / 'tokens.csv'}",
                    "--authorization-mode=Node,RBAC",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true",
                    f"--service-account-issuer={self.server}",
                    f"--service-account-key-file={pki / 'sa.key'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    # ServiceAccount: without a kubelet no pod could mount the token it injects; tests request
                    # ServiceAccount tokens explicitly (TokenRequest still works). TaintNodesByCondition: it
                    # taints new nodes not-ready until the node-lifecycle controller sees kubelet heartbeats;
                    # kwok's nodes are Ready at once, and that controller would tie scheduling to kwok's leases.
                    "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                    # SIGTERM ends the open watches after this; without it the server waits for them until its
                    # 60 s shutdown timeout (and stop() kills it after 10 s).
                    "--shutdown-watch-termination-grace-period=2s",
                    # A client certificate for admission webhooks that ask for one (the deletion gate's mTLS).
                    f"--admission-control-config-file={pki / 'admission.yaml'}",
                ],
            )
            self._wait_http("kube-apiserver", f"{self.server}/readyz", deadline, cafile=pki / "ca.crt")

            progress("kube-controller-manager, kube-scheduler, kwok")
            kubeconfig = f"--kubeconfig={self.kubeconfig}"
            self._spawn(
                "kube-controller-manager",
                [
                    str(bins.kube_controller_manager),
                    kubeconfig,
                    "--leader-elect=false",
                    "--secure-port=0",
                    f"--controllers={','.join(KCM_CONTROLLERS)}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    # client-go's default 20 requests/s would take minutes to create the benchmarks' pods.
                    "--kube-api-qps=500",
                    "--kube-api-burst=1000",
                ],
            )
            self._spawn(
                "kube-scheduler",
                [
                    str(bins.kube_scheduler),
                    kubeconfig,
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--kube-api-qps=500",
                    "--kube-api-burst=1000",
                ],
            )
            self._spawn(
                "kwok",
                [
                    str(bins.kwok),
                    kubeconfig,
                    f"--config={STAGES_FILE}",
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                    f"--cidr={POD_CIDR}",
                    "--node-ip=10.0.0.1",
                    f"--server-address=127.0.0.1:{free_port()}",
                ],
            )
            self._create_nodes()
            self._wait_nodes_ready(deadline)
            if self.real_nodes:
                self._start_real_nodes(progress, timeout)
        except BaseException:
            self.stop()
            raise
        self._save()
        real = f" and {self.real_nodes} real node(s)" if self.real_nodes else ""
        progress(f"ready: {self.nodes} kwok node(s){real}, kubeconfig {self.kubeconfig}")

    def stop(self, grace: float = 10.0) -> None:
        """Stops every component, newest first: SIGTERM, then SIGKILL after ``grace`` seconds. Real nodes go first,
        while the API server still answers: their pods, kubelets, containerds and what those left on the machine."""
        if self.real:
            started = time.monotonic()
            self._stop_real_nodes(grace)
            self.timings["real_nodes_stop"] = time.monotonic() - started
        for comp in reversed(self.components):
            _terminate(comp.pid, grace)
        self.components.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "cluster.json").unlink()

    def check_alive(self) -> None:
        dead = [c.name for c in self.components if not is_alive(c.pid)]
        if dead:
            raise ClusterError(f"component(s) exited: {', '.join(dead)}; logs in {self.state_dir / 'logs'}")

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        bins = self.binaries or locate_binaries()
        return run_kubectl(bins.kubectl, self.kubeconfig, *args, check=check, input=input)

    # -- real nodes ----------------------------------------------------------------------------------------------

    def _start_real_nodes(self, progress: Callable[[str], None], timeout: float) -> None:
        bins = self.binaries or locate_binaries()
        missing = realnode.problems(bins.kubelet)
        if missing:
            raise ClusterError("this machine cannot run a real node: " + "; ".join(missing))
        started = time.monotonic()
        archive = node_images(progress)  # minutes on a new machine (the base image), not counted in the timeout
        self.timings["real_nodes_images"] = time.monotonic() - started
        deadline = time.monotonic() + timeout
        for i in range(self.real_nodes):
            name = f"real-node-{i}"
            node = realnode.allocate(name, self.state_dir / "nodes" / str(i))
            self.real.append(node)
            self._save()  # from here on, `down` from another process finds the bridge to remove
            progress(f"{name}: containerd on {node.socket}, bridge {node.bridge} ({node.subnet})")
            self._spawn(
                f"containerd-{name}",
                realnode.containerd_argv(realnode.write_containerd_config(node)),
                env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},
            )
            realnode.wait_containerd(node, functools.partial(is_alive, self.components[-1].pid), deadline)
            realnode.import_images(node, archive)
            config = realnode.write_kubelet_config(node, free_port(), free_port())
            assert bins.kubelet is not None  # problems() said so
            self._spawn(f"kubelet-{name}", realnode.kubelet_argv(bins.kubelet, node, self.kubeconfig, config))
        progress(f"waiting for {self.real_nodes} real node(s) to be Ready")
        self._wait_nodes_ready(deadline, self.nodes + self.real_nodes, who="the kubelet")
        self.timings["real_nodes_start"] = time.monotonic() - started

    def _pods_on(self, node: str) -> list[str]:
        out = self.kubectl("get", "pods", "-A", "-o", "name", f"--field-selector=spec.nodeName={node}", check=False)
        return out.split()

    def _stop_real_nodes(self, grace: float) -> None:
        """Cordons each node (its Deployments' new pods stay Pending), deletes its pods and waits until their kubelet
        has stopped them (sandboxes and their networks too), stops the kubelet, kills what containerd still runs,
        stops containerd, then removes whatever is left: shims, mounts, the bridge, iptables rules."""
        kubelets = {c.name.removeprefix("kubelet-"): c for c in self.components if c.name.startswith("kubelet-")}
        api_up = any(c.name == "kube-apiserver" and is_alive(c.pid) for c in self.components)
        live = [n for n in self.real if n.name in kubelets and is_alive(kubelets[n.name].pid)] if api_up else []
        for node in live:
            self.kubectl("cordon", node.name, check=False)
            self.kubectl(
                "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={node.name}",
                "--grace-period=1", "--wait=false", check=False,
            )  # fmt: skip
        end = time.monotonic() + 30
        while live and time.monotonic() < end:
            live = [n for n in live if self._pods_on(n.name)]
            time.sleep(0.2)
        for node in self.real:
            for comp in [c for c in self.components if c.name == f"kubelet-{node.name}"]:
                _terminate(comp.pid, grace)
                self.components.remove(comp)
            containerd = [c for c in self.components if c.name == f"containerd-{node.name}"]
            if containerd and is_alive(containerd[0].pid):
                realnode.kill_tasks(node)
            for comp in containerd:
                _terminate(comp.pid, grace)
                self.components.remove(comp)
            realnode.sweep(node)
        self.real.clear()

    # -- persisted state, so that ``down`` works from another process -------------------------------------

    def _save(self) -> None:
        state = {
            "apiserver_port": self.apiserver_port,
            "etcd_port": self.etcd_port,
            "components": [c.__dict__ for c in self.components],
            "real_nodes": [n.as_dict() for n in self.real],
        }
        (self.state_dir / "cluster.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> LocalCluster:
        try:
            state = json.loads((state_dir / "cluster.json").read_text())
        except FileNotFoundError:
            raise ClusterError(f"no local cluster recorded in {state_dir}") from None
        return cls(
            state_dir=state_dir,
            apiserver_port=state["apiserver_port"],
            etcd_port=state["etcd_port"],
            components=[Component(**c) for c in state["components"]],
            real=[RealNode(**n) for n in state.get("real_nodes", [])],
            real_nodes=len(state.get("real_nodes", [])),
        )

    # -- helpers -------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # prctl must run in the child; clusters are only started from one thread.
                preexec_fn=None if self.detached else die_with_parent,  # noqa: PLW1509
            )
        self.components.append(Component(name=name, pid=proc.pid, log=str(log_path), argv=argv))

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """Stops one component and starts it again with the same flags (chaos tests: an API server restart). The
        API server's clients (API_CLIENTS) restart after it, once it is ready: the cluster then works at once,
        for the rest of the test and for the next one."""
        self._restart_one(name)
        if name == "kube-apiserver":
            self._wait_http(
                name,
                f"{self.server}/readyz",
                time.monotonic() + timeout,
                cafile=self.state_dir / "pki" / "ca.crt",
                pid=self.components[self._index(name)].pid,
            )
            for client in [*API_CLIENTS, *(c.name for c in self.components if c.name.startswith("kubelet-"))]:
                self._restart_one(client)
        self._save()

    def _index(self, name: str) -> int:
        return next(i for i, c in enumerate(self.components) if c.name == name)

    def _restart_one(self, name: str) -> None:
        index = self._index(name)
        old = self.components.pop(index)
        _terminate(old.pid, grace=10.0)
        self._spawn(name, old.argv)
        self.components.insert(index, self.components.pop())

    def _fail(self, name: str, why: str) -> ClusterError:
        log = self.state_dir / "logs" / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        return ClusterError(f"{name} {why}; last log lines ({log}):\n" + "\n".join(tail))

    def _wait_http(
        self, name: str, url: str, deadline: float, cafile: Path | None = None, pid: int | None = None
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        pid = pid or self.components[-1].pid
        while True:
            if not is_alive(pid):
                raise self._fail(name, "exited during start-up")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise self._fail(name, f"not ready at {url} in time")
            time.sleep(0.2)

    def _write_kubeconfig(self, token: str) -> None:
        ca = (self.state_dir / "pki" / "ca.crt").read_text()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(ca.encode()).decode(),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _create_nodes(self) -> None:
        for i in range(self.nodes):
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"kwok-node-{i}",
                    "labels": {"kubernetes.io/hostname": f"kwok-node-{i}", "type": "kwok"},
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0", KWOK_NODE_ANNOTATION: "fake"},
                },
                # No podCIDR per node: kwok then draws every pod IP from the one --cidr pool. With per-node
                # ranges inside that pool, a pod handled before kwok saw its node's range got an IP from the
                # pool that another node's range also handed out (seen: two pods with one IP).
            }
            self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def _wait_nodes_ready(self, deadline: float, count: int | None = None, who: str = "kwok") -> None:
        count = self.nodes if count is None else count
        while True:
            self.check_alive()
            out = self.kubectl(
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}",
                check=False,
            )
            if out.split().count("True") >= count:
                return
            if time.monotonic() > deadline:
                name = "kwok" if who == "kwok" else f"kubelet-{self.real[-1].name}"
                raise self._fail(name, "did not make the nodes Ready in time")
            time.sleep(0.3)


def run_kubectl(kubectl: Path, kubeconfig: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def is_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (``down`` from another process): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not _is_zombie(pid)
    return waited == 0


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False


def _terminate(pid: int, grace: float) -> None:
    # Each component leads its own session, so signalling the group also reaches anything it spawned.
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not is_alive(pid):
                return
            time.sleep(0.05)
