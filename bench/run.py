"""Benchmark harness: the operator against the naive baseline on the local cluster and the ALB emulator.

Scenarios (``--scale`` multiplies the pod counts; 1.0 is the full size):
  rollout    a Deployment of 200 replicas behind one ServerGroupMembership, `kubectl rollout restart`
  scaledown  1,000 pods across 50 ServerGroupMemberships (50 groups), all scaled to 0 at once
  faults     scaledown with 5% Throttling.User and 2% ServiceUnavailable injected
  watch      10,000 pods watched, 100 of them members that terminate: the controller's CPU and memory

The emulator behaves like the cloud as far as is known: jobs take 1-2 s, one job per group at a time, and flow
control of 200 RemoveServersFromServerGroup and 600 ListAsynJobs calls per 60 s. Each run writes
bench/results/<scenario>-<controller>.json and bench/results/<scenario>.png, and the table is printed.

    .venv/bin/python bench/run.py --scale 0.25              # every scenario, operator and baseline
    .venv/bin/python bench/run.py --scenario rollout --controller operator --scale 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, start_emulator  # noqa: E402

from localcluster import LocalCluster  # noqa: E402
from localcluster.cluster import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NS = "bench"
BATCH = 40
BEHAVIOUR = {
    "job_seconds": 1.0,
    "job_jitter_seconds": 1.0,
    "rate_limits": {"RemoveServersFromServerGroup": [200, 60], "ListAsynJobs": [600, 60]},
}


@dataclass
class Scenario:
    name: str
    deployments: int  # one group and one ServerGroupMembership each
    replicas: int
    action: str  # rollout | scaledown | delete-members
    faults: dict[str, Any] = field(default_factory=dict)
    watched: int = 0  # extra pods that are no members (watch scenario)


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
    }


def group_id(i: int) -> str:
    return f"sgp-bench{i:08d}"


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


class Bench:
    def __init__(self, tmp: Path, max_seconds: float) -> None:
        self.tmp = tmp
        self.max_seconds = max_seconds  # a run that has not removed everything by then is reported unfinished
        self.dump_dir: Path | None = None
        self.cluster = LocalCluster(state_dir=tmp / "cluster", nodes=4)
        self.cluster.start(progress=lambda m: print(f"[cluster] {m}", flush=True))
        self.api = kubernetes.config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        self.emulator = start_emulator(
            tmp,
            {
                "credentials": [{"access_key_id": ACCESS_KEY_ID, "access_key_secret": ACCESS_KEY_SECRET}],
                "behaviour": BEHAVIOUR,
            },
        )

    def close(self) -> None:
        self.emulator.stop()
        self.cluster.stop()

    # -- setup of one run -------------------------------------------------------------------------------------

    def prepare(self, sc: Scenario) -> dict[str, list[str]]:
        """Workloads Ready, groups holding their pods' IPs, resources in place; returns group -> IPs."""
        # Terminating pods of the last run would hold the namespace for their 300 s grace period; the
        # Deployments go first, or their ReplicaSets would make new pods to wait for.
        self.cluster.kubectl("delete", "deployments", "--all", "-n", NS, "--ignore-not-found", "--wait=true")
        self.cluster.kubectl("delete", "pods", "--all", "-n", NS, "--grace-period=0", "--force", "--ignore-not-found")
        self.cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=300s")
        self.core.create_namespace({"metadata": {"name": NS}})
        self.emulator.admin("POST", "reset")
        self.emulator.admin("PUT", "behaviour", BEHAVIOUR)
        for i in range(sc.deployments):
            self._deployment(f"web-{i}", sc.replicas, {"bench-member": "true", "bench-group": group_id(i)})
        if sc.watched:
            self._deployment("bystanders", sc.watched, {"bench-member": "false"})
        expected = sc.deployments * sc.replicas + sc.watched
        deadline = time.monotonic() + 900
        while True:
            pods = self.core.list_namespaced_pod(NS).items
            ready = [p for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp]
            if len(ready) >= expected:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ready)} of {expected} pods Ready")
            time.sleep(1)
        groups: dict[str, list[str]] = {group_id(i): [] for i in range(sc.deployments)}
        for p in ready:
            group = (p.metadata.labels or {}).get("bench-group")
            if group:
                groups[group].append(p.status.pod_ip)
        for group, ips in groups.items():
            self.emulator.add_group(group, [{"server_id": ip, "server_type": "Ip", "port": 8080} for ip in ips])
        return groups

    def _deployment(self, name: str, replicas: int, labels: dict[str, str]) -> None:
        self.apps.create_namespaced_deployment(
            NS,
            {
                "metadata": {"name": name},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name, **labels}},
                        "spec": {
                            "terminationGracePeriodSeconds": 300,
                            "containers": [{"name": "c", "image": "example.invalid/web:1"}],
                        },
                    },
                },
            },
        )

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

    def start_controller(self, kind: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
            "PYTHONPATH": str(ROOT / "operator"),
        }
        log = (self.tmp / f"{kind}.log").open("wb")
        if kind == "operator":
            argv = [
                sys.executable,
                "-m",
                "alb_membership",
                "run",
                "--endpoint",
                self.emulator.url,
                "-n",
                NS,
                "--metrics-port",
                str(free_port()),
                "--metrics-address",
                "127.0.0.1",
            ]
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
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        time.sleep(3.0)  # watches established (the initial listing)
        return proc

    # -- one run -----------------------------------------------------------------------------------------------

    def run(self, sc: Scenario, kind: str) -> dict[str, Any]:
        groups = self.prepare(sc)
        if kind == "operator":
            self.memberships(sc)
        controller = self.start_controller(kind)
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
        peak_rss, cpu = proc_usage(controller.pid)
        pods_watch.stop()
        result = self._measure(sc, kind, groups, leaving, pods_watch.began, started, finished, peak_rss, cpu)
        result["complete"] = complete
        if kind == "operator":  # released by the operator (Retain), so the namespace can go afterwards
            self.cluster.kubectl("delete", "sgm", "--all", "-n", NS, "--timeout=120s")
        controller.send_signal(signal.SIGTERM)
        controller.wait(60)
        return result

    def _members(self) -> int:
        out = json.loads(self.cluster.kubectl("get", "sgm", "-n", NS, "-o", "json"))
        return sum((i.get("status") or {}).get("memberCount", 0) for i in out["items"])

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float, fail: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                if fail:
                    raise RuntimeError(f"timed out waiting for {what}")
                return False
            time.sleep(0.5)
        return True

    def _measure(
        self,
        sc: Scenario,
        kind: str,
        groups: dict[str, list[str]],
        leaving: set[str],
        began: dict[str, float],
        started: float,
        finished: float,
        peak_rss: float,
        cpu: float,
    ) -> dict[str, Any]:
        requests = self.emulator.requests()
        jobs = self.emulator.admin("GET", "jobs")
        if self.dump_dir is not None:
            (self.dump_dir / f"{sc.name}-{kind}-requests.json").write_text(
                json.dumps({"requests": requests, "jobs": jobs}, indent=1)
            )
        accepted: dict[str, float] = {}
        for r in requests:
            if r["action"] == "RemoveServersFromServerGroup" and r.get("code") == "OK":
                for ip in r["servers"]:
                    accepted.setdefault(ip, r["time"] + r["duration_ms"] / 1000)
        succeeded: dict[str, float] = {}
        for job in jobs:
            if job["Status"] == "Succeeded":
                for ip in job["RemovedServers"]:
                    succeeded.setdefault(ip, job["ModifyTime"] / 1000)
        to_accept = [accepted[ip] - began[ip] for ip in leaving if ip in accepted and ip in began]
        to_success = [succeeded[ip] - began[ip] for ip in leaving if ip in succeeded and ip in began]
        removes = [r for r in requests if r["action"] == "RemoveServersFromServerGroup"]
        polls = [r for r in requests if r["action"] == "ListAsynJobs"]
        bound = sum(math.ceil(len(ips) / BATCH) for ips in groups.values())
        return {
            "scenario": sc.name,
            "controller": kind,
            "pods_leaving": len(leaving),
            "groups": len(groups),
            "watched_pods": sc.deployments * sc.replicas + sc.watched,
            "seconds_to_all_removed": finished - started,
            "accepted_s": {p: percentile(to_accept, p) for p in (50, 95, 99)},
            "succeeded_s": {p: percentile(to_success, p) for p in (50, 95, 99)},
            "remove_calls": len(removes),
            "remove_calls_ok": sum(r.get("code") == "OK" for r in removes),
            "lower_bound_calls": bound,
            "list_asyn_jobs_calls": len(polls),
            "retries": sum(r.get("code") != "OK" for r in removes + polls),
            "jobs": len(jobs),
            "codes": dict(Counter(f"{r['action']}:{r.get('code')}" for r in requests)),
            "controller_peak_rss_mib": round(peak_rss, 1),
            "controller_cpu_seconds": round(cpu, 2),
            "measured": len(to_accept),
            "series": {
                "to_accept": to_accept,
                "to_success": to_success,
                "remove_times": [r["time"] - started for r in removes],
                "poll_times": [r["time"] - started for r in polls],
            },
        }


def plot(name: str, results: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, calls) = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in results:
        for key, style in (("to_accept", "-"), ("to_success", "--")):
            values = sorted(res["series"][key])
            if values:
                cdf.plot(
                    values,
                    [(i + 1) / len(values) for i in range(len(values))],
                    style,
                    label=f"{res['controller']}: {key.replace('to_', 'to ')}",
                )
        for key, marker in (("remove_times", "RemoveServers"), ("poll_times", "ListAsynJobs")):
            times = res["series"][key]
            if times:
                bins = range(0, int(max(times)) + 2)
                counts = [sum(1 for t in times if b <= t < b + 1) for b in bins]
                calls.step(list(bins), counts, where="post", label=f"{res['controller']}: {marker}")
    cdf.set(xlabel="seconds since the pod's deletion began", ylabel="share of pods", title=f"{name}: removal latency")
    cdf.set_xscale("log")
    cdf.legend(fontsize=8)
    calls.set(xlabel="seconds since the trigger", ylabel="calls per second", title=f"{name}: API calls over time")
    calls.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def done(r: dict[str, Any]) -> str:
    if r["complete"]:
        return f"{r['seconds_to_all_removed']:.1f}"
    accepted = len(r["series"]["to_accept"])
    return f"unfinished after {r['seconds_to_all_removed']:.0f} ({accepted}/{r['pods_leaving']} accepted)"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | controller | pods | accepted p50/p95/p99 s | succeeded p50/p95/p99 s | remove calls "
        "(bound) | ListAsynJobs | retries | jobs | RSS MiB | CPU s | all removed s |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        a, s = r["accepted_s"], r["succeeded_s"]
        lines.append(
            f"| {r['scenario']} | {r['controller']} | {r['pods_leaving']} | {fmt(a[50])} / {fmt(a[95])} / {fmt(a[99])} "
            f"| {fmt(s[50])} / {fmt(s[95])} / {fmt(s[99])} | {r['remove_calls']} ({r['lower_bound_calls']}) "
            f"| {r['list_asyn_jobs_calls']} | {r['retries']} | {r['jobs']} | {r['controller_peak_rss_mib']} "
            f"| {r['controller_cpu_seconds']} | {done(r)} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    out = []
    by = {(r["scenario"], r["controller"]): r for r in rows}
    for (name, kind), op in by.items():
        base = by.get((name, "naive"))
        if kind != "operator" or base is None:
            continue

        def ratio(a: float | None, b: float | None) -> str:
            return "-" if not a or not b else f"{a / b:.2f}x"

        out.append(
            f"- {name}: accepted p50 {ratio(op['accepted_s'][50], base['accepted_s'][50])}, "
            f"p99 {ratio(op['accepted_s'][99], base['accepted_s'][99])}; succeeded p50 "
            f"{ratio(op['succeeded_s'][50], base['succeeded_s'][50])}; remove calls "
            f"{ratio(op['remove_calls'], base['remove_calls'])}; all removed "
            f"{ratio(op['seconds_to_all_removed'], base['seconds_to_all_removed'])} (operator / naive)"
        )
    return "\n".join(out)


def write_table(rows: list[dict[str, Any]]) -> int:
    for r in rows:  # percentiles read back from JSON have string keys
        for key in ("accepted_s", "succeeded_s"):
            r[key] = {int(p): v for p, v in r[key].items()}
    for name in dict.fromkeys(r["scenario"] for r in rows):
        plot(name, [r for r in rows if r["scenario"] == name])
    text = table(rows) + "\n\n" + ratios(rows) + "\n"
    print(text)
    (RESULTS / "table.md").write_text(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["rollout", "scaledown", "faults", "watch", "all"], default="all")
    parser.add_argument("--controller", choices=["operator", "naive", "both"], default="both")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild table.md and the plots from the JSON results already in bench/results",
    )
    parser.add_argument("--dump-requests", type=Path, help="write each run's emulator request log and jobs here")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=180,
        help="stop a run that has not removed everything by then, and report it unfinished",
    )
    args = parser.parse_args()
    chosen = scenarios(args.scale)
    names = list(chosen) if args.scenario == "all" else [args.scenario]
    kinds = ["operator", "naive"] if args.controller == "both" else [args.controller]
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        return write_table(
            sorted(
                (json.loads(f.read_text()) for f in RESULTS.glob("*-*.json") if not f.name.endswith("requests.json")),
                key=lambda r: (list(chosen).index(r["scenario"]), r["controller"] != "operator"),
            )
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.max_seconds)
        bench.dump_dir = args.dump_requests
        try:
            for name in names:
                results = []
                for kind in kinds:
                    print(f"[bench] {name} / {kind} ...", flush=True)
                    res = bench.run(chosen[name], kind)
                    res["scale"] = args.scale
                    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                    (RESULTS / f"{name}-{kind}.json").write_text(json.dumps(res, indent=1))
                    results.append(res)
                    rows.append(res)
                print(f"[bench] plot: {plot(name, results)}", flush=True)
        finally:
            bench.close()
    return write_table(rows)


if __name__ == "__main__":
    sys.exit(main())
