"""Benchmark harness: the operator against the naive baseline on the local cluster and the ALB emulator.

Scenarios (``--scale`` multiplies the pod counts; 1.0 is the full size):
  rollout    a Deployment of 200 replicas behind one ServerGroupMembership, `kubectl rollout restart`; the operator
             runs once per --rollout-batch-sizes (40, the API page's figure, and 200, today's API limit)
  scaledown  1,000 pods across 50 ServerGroupMemberships (50 groups), all scaled to 0 at once
  faults     scaledown with 5% Throttling.User and 2% ServiceUnavailable injected
  watch      10,000 pods watched, 100 of them members that terminate: the controller's CPU and memory
  takeover   the watch scale, two operator replicas with --leader-elect: the leader is SIGKILLed (then, in the
             next round, SIGTERMed) and the members scaled to 0 at once; time to the first accepted removal

The emulator behaves like the cloud as far as is known: jobs take 1-2 s, one job per group at a time, at most 200
servers per call, and flow control of 200 RemoveServersFromServerGroup and 600 ListAsynJobs calls per 60 s. For
each operator run the harness also records the time from process start to /readyz 200, peak RSS, CPU seconds,
and from /metrics albm_watched_pods and albm_watch_events (CPU seconds per 1,000 pod events). The baseline runs
once per scenario beside the operator, in the same invocation, and is stopped at --max-seconds (unfinished).

Each (scenario, variant) writes bench/results/<scenario>-<variant>.json with all its runs; bench/report.py makes
bench/results/table.md (medians over runs, the goals of issue 11 met or missed) and bench/results/<scenario>.png.
The watch and takeover scenarios reuse the 10,000 pods (the bystanders are kept between runs).

    .venv/bin/python bench/run.py --scale 1 --runs-watch 2 --max-seconds 120
    .venv/bin/python bench/run.py --scenario rollout --controller operator --scale 0.25
    .venv/bin/python bench/run.py --table-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, start_emulator  # noqa: E402

from localcluster import LocalCluster  # noqa: E402
from localcluster.cluster import die_with_parent, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NS = "bench"
GOAL_BATCH = 40  # the calls goal: ceil(n/40) per group
BEHAVIOUR = {
    "job_seconds": 1.0,
    "job_jitter_seconds": 1.0,
    "max_servers_per_call": 200,  # today's API limit; the operator's --batch-size decides what it sends
    "rate_limits": {"RemoveServersFromServerGroup": [200, 60], "ListAsynJobs": [600, 60]},
}


@dataclass
class Scenario:
    name: str
    deployments: int  # one group and one ServerGroupMembership each
    replicas: int
    action: str  # rollout | scaledown | takeover
    faults: dict[str, Any] = field(default_factory=dict)
    watched: int = 0  # extra pods that are no members (watch and takeover scenarios)


def scenarios(scale: float) -> dict[str, Scenario]:
    n = lambda full: max(1, round(full * scale))  # noqa: E731
    return {
        "rollout": Scenario("rollout", 1, n(200), "rollout"),
        "scaledown": Scenario("scaledown", 50, max(1, n(1000) // 50), "scaledown"),
        "faults": Scenario(
            "faults",
            50,
            max(1, n(1000) // 50),
            "scaledown",
            faults={"rates": {"Throttling.User": 0.05, "ServiceUnavailable": 0.02}},
        ),
        "watch": Scenario("watch", 1, n(100), "scaledown", watched=n(10000) - n(100)),
        "takeover": Scenario("takeover", 1, n(100), "takeover", watched=n(10000) - n(100)),
    }


def group_id(i: int) -> str:
    return f"sgp-bench{i:08d}"


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return (
        f"{model}, {os.cpu_count()} cores (shared), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"Python {platform.python_version()}, Linux {platform.release()}"
    )


class PodWatch:
    """Records, per pod IP, when the harness first saw the pod's deletionTimestamp (sub-second clock)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.began: dict[str, float] = {}
        self._core = kubernetes.client.CoreV1Api(api)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self._core.list_namespaced_pod, NS, label_selector="bench-member=true", timeout_seconds=5
                ):
                    pod = event["object"]
                    if pod.metadata.deletion_timestamp and pod.status.pod_ip:
                        self.began.setdefault(pod.status.pod_ip, time.time())
                    if self._stop.is_set():
                        break
            except Exception:  # a reconnect is fine; the first sighting is what counts
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def proc_usage(pid: int) -> tuple[float, float]:
    """(peak RSS MiB, CPU seconds) of a process and its threads, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return peak, cpu


def rel(t: float | None, origin: float) -> float | None:
    return None if t is None else round(t - origin, 3)


def bucket_percentile(buckets: dict[str, float], p: float) -> float | None:
    """The upper bound of the bucket holding the p-th percentile of a cumulative Prometheus histogram."""
    if not buckets or not buckets.get("+Inf"):
        return None
    total = buckets["+Inf"]
    for le, count in sorted(((float(k), v) for k, v in buckets.items()), key=lambda kv: kv[0]):
        if count >= p / 100 * total:
            return le
    return None


def waves(began: list[float], gap: float = 0.5) -> list[int]:
    """Sizes of the bursts of deletions: a new wave starts after ``gap`` seconds without a deletion beginning."""
    sizes: list[int] = []
    last = None
    for t in sorted(began):
        if last is None or t - last > gap:
            sizes.append(0)
        sizes[-1] += 1
        last = t
    return sizes


@dataclass
class Controller:
    name: str
    kind: str  # operator | naive
    popen: subprocess.Popen[bytes]
    started: float  # time.time() just before the process was started
    port: int | None = None
    ready_s: float | None = None
    cpu_at_ready: float | None = None
    rss_at_ready: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def readyz(self) -> dict[str, Any] | None:
        try:
            status, body = self.get("/readyz", timeout=1.0)
        except OSError:
            return None
        answer = json.loads(body)
        answer["status"] = status
        return answer

    def metrics(self) -> dict[str, float]:
        _, body = self.get("/metrics", timeout=10)
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            match = re.match(r"^(albm_(?:watched_pods|watch_events|leader|ledger_identities))\s+(\S+)$", line)
            if match:
                out[match.group(1)] = float(match.group(2))
        return out

    def histogram(self, name: str) -> dict[str, dict[str, float]]:
        """A histogram's cumulative buckets from /metrics, by its ``since`` label: {since: {le: count}}."""
        _, body = self.get("/metrics", timeout=10)
        out: dict[str, dict[str, float]] = {}
        for line in body.decode().splitlines():
            if line.startswith(f"{name}_bucket{{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
                out.setdefault(labels.get("since", ""), {})[labels["le"]] = float(line.rsplit(" ", 1)[1])
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def source_tree(rev: str | None, tmp: Path) -> tuple[Path, str]:
    """The operator, emulator and CRDs to run: the work tree, or ``rev`` unpacked (a benchmark of a named version,
    unaffected by edits made while it runs). Returns the folder holding operator/ and crds/, and a description."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev or "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    )
    described = head.stdout.strip()[:100]
    if rev is None:
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "operator", "crds"], check=False
        ).returncode
        return ROOT, f"work tree at {described}" + (" (with uncommitted changes)" if dirty else "")
    src = tmp / "src"
    src.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "operator", "crds"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    os.environ["PYTHONPATH"] = str(src / "operator")  # the emulator's process, started by tests.support
    return src, f"commit {described}"


class Bench:
    def __init__(
        self,
        tmp: Path,
        log_dir: Path,
        max_seconds: float,
        src: Path = ROOT,
        emulator_max_line: int = 0,
        nodes: int = 4,
        real_nodes: int = 0,
    ) -> None:
        """``nodes``: kwok's; ``real_nodes``: with a kubelet and containerd each (bench/traffic.py)."""
        self.tmp = tmp
        self.src = src
        self.log_dir = log_dir
        self.max_seconds = max_seconds  # a run that has not removed everything by then is reported unfinished
        self.dump_dir: Path | None = None
        self.controllers: list[Controller] = []
        self.cluster = LocalCluster(state_dir=tmp / "cluster", nodes=nodes, real_nodes=real_nodes)
        self.cluster.start(progress=lambda m: print(f"[cluster] {m}", flush=True))
        self.api = kubernetes.config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.coordination = kubernetes.client.CoordinationV1Api(self.api)
        self.cluster.kubectl("apply", "-f", str(src / "crds"))
        self.core.create_namespace({"metadata": {"name": NS}})
        # The emulator's default request-line limit takes the SDK's 200-server removal (docs/emulator.md).
        behaviour = {**BEHAVIOUR, **({"max_request_line": emulator_max_line} if emulator_max_line else {})}
        config = {
            "credentials": [{"access_key_id": ACCESS_KEY_ID, "access_key_secret": ACCESS_KEY_SECRET}],
            "behaviour": behaviour,
        }
        self.emulator = start_emulator(tmp, config)

    def close(self) -> None:
        for c in self.controllers:
            c.stop(signal.SIGKILL, 10)
        self.emulator.stop()
        self.cluster.stop()

    # -- setup of one run -------------------------------------------------------------------------------------

    def _clear(self, selector: str) -> None:
        """Deployments and ReplicaSets go first without their pods (so nothing recreates them), then the pods at
        once (grace 0): no pod of a former run stays Terminating for its 300 s."""
        self.cluster.kubectl(
            "delete", "deployments,replicasets", "-n", NS, "-l", selector, "--cascade=orphan", "--wait=true"
        )
        deadline = time.monotonic() + 600
        while True:
            self.core.delete_collection_namespaced_pod(NS, label_selector=selector, grace_period_seconds=0)
            if not self.core.list_namespaced_pod(NS, label_selector=selector, limit=1).items:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pods {selector} not gone")
            time.sleep(1)

    def _release_memberships(self) -> bool:
        """Deletes the resources while the operator runs (it drops its finalizer); False if it did not within 60 s
        (removals it still waits for), and then the finalizers are dropped by hand."""
        self.cluster.kubectl("delete", "sgm", "--all", "-n", NS, "--wait=false")
        released = self._wait(
            lambda: not self.cluster.kubectl("get", "sgm", "-n", NS, "-o", "name").strip(), "release", 60, fail=False
        )
        if not released:
            print("[bench] the operator did not release its resources within 60 s", flush=True)
            self._drop_memberships()
        return released

    def _drop_memberships(self) -> None:
        """Resources left over (an operator released them normally, before it stopped): finalizers dropped."""
        names = self.cluster.kubectl("get", "sgm", "-n", NS, "-o", "name").split()
        for name in names:
            self.cluster.kubectl("patch", "-n", NS, name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        if names:
            self.cluster.kubectl("delete", "sgm", "--all", "-n", NS, "--timeout=60s")

    def prepare(self, sc: Scenario, **template: Any) -> dict[str, list[str]]:
        """Workloads Ready, groups holding their pods' IPs; returns group -> IPs. ``template``: more of the members'
        Deployments (see _deployment). Bystanders of the right count are kept from the last run (creating 10,000
        pods takes minutes)."""
        self._drop_memberships()
        self.cluster.kubectl("delete", "leases", "--all", "-n", NS)
        self._clear("bench-member=true")
        bystanders = self.apps.list_namespaced_deployment(NS, label_selector="bench-member=false").items
        keep = bool(sc.watched) and len(bystanders) == 1 and bystanders[0].spec.replicas == sc.watched
        if not keep:
            self._clear("bench-member=false")
        self.emulator.admin("POST", "reset")
        self.emulator.admin("PUT", "behaviour", BEHAVIOUR)
        began = time.monotonic()
        for i in range(sc.deployments):
            self._deployment(f"web-{i}", sc.replicas, {"bench-member": "true", "bench-group": group_id(i)}, **template)
        if sc.watched and not keep:
            self._deployment("bystanders", sc.watched, {"bench-member": "false"})
        expected = sc.deployments * sc.replicas + sc.watched
        ready = self._wait_pods(expected, 1200)
        print(f"[bench] {len(ready)} pods Ready in {time.monotonic() - began:.0f}s", flush=True)
        groups: dict[str, list[str]] = {group_id(i): [] for i in range(sc.deployments)}
        for p in ready:
            group = (p["metadata"].get("labels") or {}).get("bench-group")
            if group:
                groups[group].append(p["status"]["podIP"])
        for group, ips in groups.items():
            self.emulator.add_group(group, [{"server_id": ip, "server_type": "Ip", "port": 8080} for ip in ips])
        return groups

    def _wait_pods(self, expected: int, timeout: float) -> list[dict[str, Any]]:
        """Pods with an IP and no deletionTimestamp, as raw JSON (model objects of 10,000 pods cost seconds)."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            resp = self.core.list_namespaced_pod(NS, _preload_content=False)
            pods = json.loads(resp.data)["items"]
            ready = [
                p for p in pods if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
            ]
            if len(ready) >= expected:
                return ready
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ready)} of {expected} pods Ready")
            if len(ready) // 1000 != last // 1000:
                print(f"[bench] {len(ready)}/{expected} pods Ready", flush=True)
            last = len(ready)
            time.sleep(3 if expected > 1000 else 0.5)

    def _deployment(
        self,
        name: str,
        replicas: int,
        labels: dict[str, str],
        grace: int = 300,
        strategy: dict[str, Any] | None = None,
        readiness_gates: list[str] | None = None,
    ) -> None:
        """``strategy``: the Deployment's (default: the API server's, RollingUpdate 25%/25%); ``readiness_gates``:
        condition types the pods list in spec.readinessGates."""
        pod_spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "c", "image": "example.invalid/web:1"}],
        }
        if readiness_gates:
            pod_spec["readinessGates"] = [{"conditionType": c} for c in readiness_gates]
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, **labels}}, "spec": pod_spec},
        }
        if strategy is not None:
            spec["strategy"] = strategy
        self.apps.create_namespaced_deployment(NS, {"metadata": {"name": name, "labels": labels}, "spec": spec})

    def memberships(self, sc: Scenario) -> None:
        for i in range(sc.deployments):
            body = {
                "apiVersion": "albmembership.io/v1alpha1",
                "kind": "ServerGroupMembership",
                "metadata": {"name": f"web-{i}"},
                "spec": {
                    "serverGroupId": group_id(i),
                    "podSelector": {"matchLabels": {"app": f"web-{i}"}},
                    "backend": {"serverType": "Ip", "port": 8080},
                    "deletionPolicy": "Retain",  # tearing the run down must not remove anything
                },
            }
            self.cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(body))

    # -- controllers -------------------------------------------------------------------------------------------

    def start_controller(
        self, kind: str, name: str, batch_size: int = 40, leader_elect: bool = False, extra: tuple[str, ...] = ()
    ) -> Controller:
        """The operator or the naive baseline as a process (``extra``: more of its flags); an operator is waited for
        until /readyz answers 200."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
            "PYTHONPATH": str(self.src / "operator"),
        }
        log = (self.log_dir / f"{name}.log").open("wb")
        port = None
        if kind == "operator":
            port = free_port()
            argv = [
                sys.executable,
                "-m",
                "alb_membership",
                "run",
                "--endpoint",
                self.emulator.url,
                "-n",
                NS,
                "--batch-size",
                str(batch_size),
                "--metrics-port",
                str(port),
                "--listen-address",
                "127.0.0.1",
            ]
            if leader_elect:
                argv += ["--leader-elect", "--leader-election-namespace", NS]
        else:
            argv = [
                sys.executable,
                str(ROOT / "bench" / "naive.py"),
                "--endpoint",
                self.emulator.url,
                "--namespace",
                NS,
                "--selector",
                "bench-member=true",
            ]
        argv += extra
        started = time.time()
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        ctl = Controller(name, kind, popen, started, port)
        self.controllers.append(ctl)
        if kind == "operator":
            self._wait_ready(ctl)
        else:
            time.sleep(3.0)  # the baseline has no probe: its watch of the member pods is established by then
        return ctl

    def _wait_ready(self, ctl: Controller, timeout: float = 900) -> None:
        """Polls /readyz every 50 ms: ready once the watches have listed (and, on a leader, kopf is ready)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = ctl.readyz()
            if answer is not None and answer["status"] == 200:
                ctl.ready_s = time.time() - ctl.started
                ctl.rss_at_ready, ctl.cpu_at_ready = proc_usage(ctl.pid)
                print(
                    f"[bench] {ctl.name} ready after {ctl.ready_s:.2f}s (leader: {answer.get('leader')}, "
                    f"CPU {ctl.cpu_at_ready:.1f}s, RSS {ctl.rss_at_ready:.0f} MiB)",
                    flush=True,
                )
                return
            if ctl.popen.poll() is not None:
                raise RuntimeError(f"{ctl.name} exited with {ctl.popen.returncode}; see {self.log_dir}/{ctl.name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ctl.name} not ready after {timeout:.0f}s")
            time.sleep(0.05)

    # -- one run -----------------------------------------------------------------------------------------------

    def run(self, sc: Scenario, variant: str, index: int) -> dict[str, Any]:
        kind = "naive" if variant == "naive" else "operator"
        batch = int(variant.split("-b")[1]) if kind == "operator" else 1
        groups = self.prepare(sc)
        if kind == "operator":
            self.memberships(sc)
        loadavg = os.getloadavg()[0]
        ctl = self.start_controller(kind, f"{sc.name}-{variant}-{index}", batch)
        if kind == "operator":
            self._wait(lambda: self._members() >= sum(len(v) for v in groups.values()), "members recorded", 300)
        self.emulator.admin("PUT", "faults", sc.faults or {})
        pods_watch = PodWatch(self.api)
        leaving = {ip for ips in groups.values() for ip in ips}
        started = time.time()
        if sc.action == "rollout":
            self.cluster.kubectl("rollout", "restart", "-n", NS, "deployment/web-0")
        else:
            for i in range(sc.deployments):
                self.apps.patch_namespaced_deployment_scale(f"web-{i}", NS, {"spec": {"replicas": 0}})

        def all_gone() -> bool:
            present = {s["ServerId"] for g in groups for s in self.emulator.group(g)["Servers"]}
            return not present & leaving

        complete = self._wait(all_gone, "every leaving pod out of its group", self.max_seconds, fail=False)
        finished = time.time()
        time.sleep(2)
        peak_rss, cpu = proc_usage(ctl.pid)
        metrics = ctl.metrics() if kind == "operator" else {}
        own = ctl.histogram("albm_removal_accepted_seconds") if kind == "operator" else {}
        pods_watch.stop()
        result = self._measure(sc, variant, batch, groups, leaving, pods_watch.began, started, finished)
        events = metrics.get("albm_watch_events")
        result.update(
            complete=complete,
            controller_peak_rss_mib=round(peak_rss, 1),
            controller_cpu_seconds=round(cpu, 2),
            startup_ready_s=None if ctl.ready_s is None else round(ctl.ready_s, 3),
            cpu_at_ready_s=ctl.cpu_at_ready,
            rss_at_ready_mib=None if ctl.rss_at_ready is None else round(ctl.rss_at_ready, 1),
            watched_pods_metric=metrics.get("albm_watched_pods"),
            watch_events=events,
            cpu_s_per_1000_events=round(cpu / (events / 1000), 3) if events else None,
            loadavg=loadavg,
            # the operator's own clock: from observing the change to the call's answer (bucket upper bounds)
            operator_accepted_buckets=own,
            operator_accepted_p99_bucket=bucket_percentile(own.get("observed", {}), 99),
        )
        if kind == "operator":  # released by the operator (Retain), so the next run starts clean
            result["released_by_operator"] = self._release_memberships()
        ctl.stop()
        return result

    def _members(self) -> int:
        out = json.loads(self.cluster.kubectl("get", "sgm", "-n", NS, "-o", "json"))
        return sum((i.get("status") or {}).get("memberCount", 0) for i in out["items"])

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float, fail: bool = True, every: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                if fail:
                    raise RuntimeError(f"timed out waiting for {what}")
                return False
            time.sleep(every)
        return True

    def _measure(
        self,
        sc: Scenario,
        variant: str,
        batch: int,
        groups: dict[str, list[str]],
        leaving: set[str],
        began: dict[str, float],
        started: float,
        finished: float,
    ) -> dict[str, Any]:
        requests = self.emulator.requests()
        jobs = self.emulator.admin("GET", "jobs")
        if self.dump_dir is not None:
            (self.dump_dir / f"{sc.name}-{variant}-requests.json").write_text(
                json.dumps({"requests": requests, "jobs": jobs}, indent=1)
            )
        accepted: dict[str, float] = {}
        call_of: dict[str, int] = {}
        ok_calls = [r for r in requests if r["action"] == "RemoveServersFromServerGroup" and r.get("code") == "OK"]
        for index, r in enumerate(ok_calls):
            for ip in r["servers"]:
                accepted.setdefault(ip, r["time"] + r["duration_ms"] / 1000)
                call_of.setdefault(ip, index)
        succeeded: dict[str, float] = {}
        for job in jobs:
            if job["Status"] == "Succeeded":
                for ip in job["RemovedServers"]:
                    succeeded.setdefault(ip, job["ModifyTime"] / 1000)
        to_accept = [accepted[ip] - began[ip] for ip in leaving if ip in accepted and ip in began]
        to_success = [succeeded[ip] - began[ip] for ip in leaving if ip in succeeded and ip in began]
        removes = [r for r in requests if r["action"] == "RemoveServersFromServerGroup"]
        polls = [r for r in requests if r["action"] == "ListAsynJobs"]
        job_seconds = sorted((j["ModifyTime"] - j["CreateTime"]) / 1000 for j in jobs if j["Status"] == "Succeeded")
        jobs_by_id = {
            j["Id"]: {"span": [j["CreateTime"] / 1000 - started, j["ModifyTime"] / 1000 - started]} for j in jobs
        }
        return {
            "scenario": sc.name,
            "variant": variant,
            "controller": "naive" if variant == "naive" else "operator",
            "batch_size": batch,
            "pods_leaving": len(leaving),
            "groups": len(groups),
            "watched_pods": sc.deployments * sc.replicas + sc.watched,
            "seconds_to_all_removed": finished - started,
            "accepted_s": {str(p): percentile(to_accept, p) for p in (50, 95, 99)},
            "succeeded_s": {str(p): percentile(to_success, p) for p in (50, 95, 99)},
            "remove_calls": len(removes),
            "remove_calls_ok": sum(r.get("code") == "OK" for r in removes),
            "lower_bound_calls": sum(math.ceil(len(ips) / batch) for ips in groups.values()),
            "bound_at_40": sum(math.ceil(len(ips) / GOAL_BATCH) for ips in groups.values()),
            "servers_per_call": [len(r["servers"]) for r in removes if r.get("code") == "OK"],
            "list_asyn_jobs_calls": len(polls),
            "retries": sum(r.get("code") != "OK" for r in removes + polls),
            "jobs": len(jobs),
            "job_seconds_p50_max": [percentile(job_seconds, 50), job_seconds[-1] if job_seconds else None],
            "wave_sizes": waves(list(began.values())),
            "codes": dict(Counter(f"{r['action']}:{r.get('code')}" for r in requests)),
            "measured": len(to_accept),
            "series": {
                "to_accept": to_accept,
                "to_success": to_success,
                "remove_times": [r["time"] - started for r in removes],
                "poll_times": [r["time"] - started for r in polls],
                # per leaving pod, seconds since the trigger: [deletion seen, accepted, succeeded, OK call's index]
                "pods": {
                    ip: [
                        rel(began.get(ip), started),
                        rel(accepted.get(ip), started),
                        rel(succeeded.get(ip), started),
                        call_of.get(ip),
                    ]
                    for ip in sorted(leaving)
                },
                "calls": [
                    {
                        "at": r["time"] - started,
                        "servers": len(r["servers"]),
                        "group": r.get("server_group_id"),
                        "job": (jobs_by_id.get(r.get("job_id")) or {}).get("span"),
                    }
                    for r in ok_calls
                ],
            },
        }

    # -- takeover ----------------------------------------------------------------------------------------------

    def takeover(self, sc: Scenario, signals: list[str], batch: int) -> dict[str, Any]:
        """Two replicas with --leader-elect; per round a fresh standby is started and made ready, the leader gets
        the signal, the members are scaled to 0 at once, and the standby's first removal is timed."""
        groups = self.prepare(sc)
        gid = group_id(0)
        self.memberships(sc)
        loadavg = os.getloadavg()[0]
        leader = self.start_controller("operator", "takeover-0", batch, leader_elect=True)
        self._wait(lambda: (leader.readyz() or {}).get("leader") is True, "the first replica leading", 60)
        self._wait(lambda: self._members() >= sc.replicas, "members recorded", 300)
        events = []
        for i, sig_name in enumerate(signals):
            if i > 0:
                groups = self._restore_members(sc, gid)
            standby = self.start_controller("operator", f"takeover-{i + 1}", batch, leader_elect=True)
            state = standby.readyz() or {}
            if state.get("leader"):
                raise RuntimeError(f"{standby.name} leads before the signal: {state}")
            event = self._takeover_round(sig_name, leader, standby, gid, set(groups[gid]))
            print(f"[bench] takeover {json.dumps(event)}", flush=True)
            events.append(event)
            if leader.popen.poll() is None:
                leader.stop(signal.SIGKILL, 10)
            leader = standby
        self._release_memberships()
        leader.stop()
        return {
            "scenario": sc.name,
            "variant": f"operator-b{batch}",
            "controller": "operator",
            "events": events,
            "loadavg": loadavg,
            "watched_pods": sc.deployments * sc.replicas + sc.watched,
        }

    def _takeover_round(
        self, sig_name: str, leader: Controller, standby: Controller, gid: str, leaving: set[str]
    ) -> dict[str, Any]:
        leader_peak, leader_cpu = proc_usage(leader.pid)
        leader_metrics = leader.metrics()
        leading_at: list[float] = []
        exited_at: list[float] = []
        stop_poll = threading.Event()

        def poll_leader() -> None:  # the standby's /readyz every 50 ms until it says leader
            while not stop_poll.is_set():
                answer = standby.readyz()
                if answer is not None and answer.get("leader"):
                    leading_at.append(time.time())
                    return
                time.sleep(0.05)

        def wait_exit() -> None:
            leader.popen.wait()
            exited_at.append(time.time())

        def all_gone() -> bool:
            return not {s["ServerId"] for s in self.emulator.group(gid)["Servers"]} & leaving

        poller = threading.Thread(target=poll_leader, daemon=True)
        poller.start()
        sig = signal.SIGKILL if sig_name == "SIGKILL" else signal.SIGTERM
        signalled = time.time()
        os.kill(leader.pid, sig)
        self.apps.patch_namespaced_deployment_scale("web-0", NS, {"spec": {"replicas": 0}})
        scaled = time.time()
        threading.Thread(target=wait_exit, daemon=True).start()
        complete = self._wait(all_gone, "members out of the group", 120, fail=False, every=0.1)
        done = time.time()
        poller.join(5)
        stop_poll.set()
        time.sleep(0.5)
        removes = [r for r in self.emulator.requests("RemoveServersFromServerGroup") if r["time"] >= signalled]
        ok = [r["time"] for r in removes if r.get("code") == "OK"]
        first = min(ok) if ok else None
        lead = leading_at[0] if leading_at else None
        peak, cpu = proc_usage(standby.pid)
        metrics = standby.metrics()
        return {
            "signal": sig_name,
            "leader": leader.name,
            "standby": standby.name,
            "scaled_after_s": scaled - signalled,
            "leader_exited_s": exited_at[0] - signalled if exited_at else None,
            "standby_leading_s": None if lead is None else lead - signalled,
            "first_removal_s": None if first is None else first - signalled,
            "first_removal_after_leading_s": None if first is None or lead is None else first - lead,
            "first_attempt_s": min(r["time"] for r in removes) - signalled if removes else None,
            "all_removed_s": done - signalled if complete else None,
            "complete": complete,
            "remove_calls": len(removes),
            "remove_calls_ok": len(ok),
            "servers_per_call": [len(r["servers"]) for r in removes if r.get("code") == "OK"],
            "pods_leaving": len(leaving),
            "standby_ready_s": standby.ready_s,
            "standby_cpu_at_ready_s": standby.cpu_at_ready,
            "standby_peak_rss_mib": round(peak, 1),
            "standby_cpu_s": cpu,
            "watched_pods": metrics.get("albm_watched_pods"),
            "watch_events": metrics.get("albm_watch_events"),
            "leader_peak_rss_mib": round(leader_peak, 1),
            "leader_cpu_s": leader_cpu,
            "leader_watch_events": leader_metrics.get("albm_watch_events"),
        }

    def _restore_members(self, sc: Scenario, gid: str) -> dict[str, list[str]]:
        """The members back for the next round: the Terminating ones of the last round go at once, the Deployment
        is scaled up again, the group holds the new pods' IPs, and the leader has recorded them."""
        self.core.delete_collection_namespaced_pod(NS, label_selector="bench-member=true", grace_period_seconds=0)
        self._wait(
            lambda: not self.core.list_namespaced_pod(NS, label_selector="bench-member=true").items, "members gone", 120
        )
        self.apps.patch_namespaced_deployment_scale("web-0", NS, {"spec": {"replicas": sc.replicas}})

        def members() -> list[Any]:
            pods = self.core.list_namespaced_pod(NS, label_selector="bench-member=true").items
            return [p for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp]

        self._wait(lambda: len(members()) >= sc.replicas, "members Ready", 300)
        ips = [p.status.pod_ip for p in members()]
        self.emulator.add_group(gid, [{"server_id": ip, "server_type": "Ip", "port": 8080} for ip in ips])

        def recorded() -> bool:
            items = json.loads(self.cluster.kubectl("get", "sgm", "-n", NS, "-o", "json"))["items"]
            status = items[0].get("status") or {}
            return status.get("memberCount", 0) >= sc.replicas and status.get("pendingCount", 0) == 0

        self._wait(recorded, "members recorded", 300)
        return {gid: ips}


def save(out: Path, scenario: str, variant: str, runs: list[dict[str, Any]]) -> None:
    path = out / f"{scenario}-{variant}.json"
    path.write_text(json.dumps({"scenario": scenario, "variant": variant, "runs": runs}, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenario",
        default="all",
        help="rollout, scaledown, faults, watch, takeover, a comma-separated list of them, or all (default)",
    )
    parser.add_argument("--controller", choices=["operator", "naive", "both"], default="both")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=40, help="the operator's --batch-size (default 40)")
    parser.add_argument(
        "--rollout-batch-sizes",
        default="40,200",
        help="the operator's --batch-size values for the rollout scenario, comma-separated (default 40,200)",
    )
    parser.add_argument("--runs", type=int, default=1, help="operator runs per variant (default 1)")
    parser.add_argument(
        "--runs-watch",
        type=int,
        default=2,
        help="operator runs of the watch scenario, and rounds of each signal in the takeover scenario (default 2)",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild table.md and the plots from the JSON results already in bench/results",
    )
    parser.add_argument(
        "--source",
        metavar="REV",
        help="run the operator, the emulator and the CRDs of this git revision (default: the work tree)",
    )
    parser.add_argument(
        "--emulator-max-line",
        type=int,
        default=0,
        help="the emulator's request-line limit in bytes (its behaviour max_request_line); 0: its default, which "
        "takes the SDK's 200-server removal; 8190: aiohttp's default, which refuses more than about 95 (default 0)",
    )
    parser.add_argument("--dump-requests", type=Path, help="write each run's emulator request log and jobs here")
    parser.add_argument("--log-dir", type=Path, help="keep the controllers' logs here (default: a temporary folder)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120,
        help="stop a run that has not removed everything by then, and report it unfinished (default 120)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where the JSON, the plots and table.md go (default bench/results)",
    )
    args = parser.parse_args()
    out: Path = args.results
    report.RESULTS = out
    out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        print(report.write())
        return 0
    chosen = scenarios(args.scale)
    names = list(chosen) if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in chosen]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    kinds = ["operator", "naive"] if args.controller == "both" else [args.controller]
    if args.scenario == "all" and args.controller == "both":  # a full run replaces every result
        for old in out.glob("*.json"):
            if old.name.split("-")[0] in report.SCENARIO_ORDER:
                old.unlink()
    host = machine()
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = args.log_dir or Path(tmp) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        src, source = source_tree(args.source, Path(tmp))
        if args.emulator_max_line:
            source += f"; emulator request-line limit {args.emulator_max_line} bytes"
        print(f"[bench] operator: {source}", flush=True)
        bench = Bench(Path(tmp), log_dir, args.max_seconds, src, args.emulator_max_line)
        bench.dump_dir = args.dump_requests
        try:
            for name in names:
                sc = chosen[name]
                if name == "takeover":
                    if "operator" not in kinds:
                        continue
                    print(f"[bench] takeover ({args.runs_watch} x SIGKILL, SIGTERM) ...", flush=True)
                    res = bench.takeover(sc, ["SIGKILL", "SIGTERM"] * args.runs_watch, args.batch_size)
                    res.update(scale=args.scale, machine=host, source=source)
                    save(out, name, res["variant"], [res])
                    continue
                batches = [args.batch_size]
                if name == "rollout":
                    batches = [int(b) for b in args.rollout_batch_sizes.split(",")]
                variants = [f"operator-b{b}" for b in batches if "operator" in kinds]
                if "naive" in kinds:
                    variants.append("naive")
                for variant in variants:
                    count = 1 if variant == "naive" else (args.runs_watch if name == "watch" else args.runs)
                    runs = []
                    for index in range(count):
                        print(f"[bench] {name} / {variant} run {index + 1}/{count} ...", flush=True)
                        res = bench.run(sc, variant, index)
                        res.update(scale=args.scale, machine=host, source=source)
                        runs.append(res)
                        save(out, name, variant, runs)  # after every run: an interrupted run keeps what it measured
        finally:
            bench.close()
    print(f"[bench] done in {time.time() - began:.0f}s", flush=True)
    print(report.write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
