"""Failed requests during a rollout, a scale-down and a node drain, per mode: real pods, real requests.

Two real nodes (a kubelet and a containerd each, localcluster/realnode.py) run a Deployment of 20 replicas of the
workload image (workload/albm_workload.py: answers with its pod name, closes its listener on SIGTERM and finishes
the requests in flight), with a readiness probe, no preStop hook, RollingUpdate maxSurge 25% maxUnavailable 0. The
emulator's server group holds the pods' servers; its data plane (alb_emulator/dataplane.py, the model in
docs/emulator.md) forwards each request of the load generator (alb_emulator/loadgen.py: 200 requests/s, open loop,
loopback and the nodes' bridges only, each request 5 s at most) to a server in rotation. Jobs take 1-2 s (bench/run.py's
BEHAVIOUR); a server being removed still gets requests until its job ends (the emulator's default).

Modes (what puts servers into the group and what takes them out):
  no-operator   the stand-in registrar (bench/naive.py --register --remove-on deleted): each pod's server added
                once the pod is Ready, removed once the pod is gone from the API (a group kept in step with the pod
                list, after the fact)
  naive         the same registrar, removing each pod's server as soon as it is seen terminating, one call each
                (bench/naive.py: how existing controllers do it)
  remove-only   the registrar adds; the operator removes (spec without deletionGate or registration)
  remove+gate   the registrar adds; the operator removes, with the deletion gate (the chart's webhook)
  full          the operator alone: registration, the readiness gate in the pods, the deletion gate

Each run of a mode starts from an empty group and a new Deployment (20 pods Ready and their servers Available),
then: a rolling update (`kubectl rollout restart`), a scale-down to 10, a scale back to 20 (not measured), and a
drain of the real node with the most of its pods (`kubectl drain`, then uncordon). Each is measured from its
command to the group settled (the Deployment complete, no pod terminating, the group's servers exactly the live
pods'), with the load running from 2 s before to 2 s after. Figures per scenario:
  failed        requests the client got no 2xx-4xx answer to (the proxy's 5xx, a refusal, a reset, a timeout)
  after SIGTERM requests a pod answered during its drain (the workload marks them X-Draining: 1): in flight when
                SIGTERM came
  duration      from the command to the group settled
  exposed       pods whose server was still in rotation when the harness saw them terminating, and for how long
                (to the emulator's out_of_rotation_at: p50 and max; negative: out before the pod was told to go)
  calls         AddServersToServerGroup and RemoveServersFromServerGroup the emulator answered, by code
  fewest        fewest of the workload's servers Available in the group, and fewest of those whose pod can answer
                (not terminating, its containers ready): sampled every 0.1 s

    .venv/bin/python bench/traffic.py --runs 3
    .venv/bin/python bench/traffic.py --runs 1 --modes full,no-operator --scenarios rollout
    .venv/bin/python bench/traffic.py --table-only

Writes bench/results/traffic.json (every run), traffic.md (medians over runs) and traffic.png (requests and failures
per second over each scenario, per mode, of the first run).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exposure import MAX_WAIT_SECONDS, ExposureBench, TerminationWatch, gate_flags
from run import BEHAVIOUR, NS, RESULTS, group_id, machine, source_tree
from tests.support.realnode import workload_deployment
from tests.support.traffic import Load, open_listener

from alb_emulator.loadgen import LoadResult
from localcluster.cluster import free_port

REPLICAS = 20
SCALED_DOWN = 10
RATE = 200.0
NAME = "web-0"  # ExposureBench.membership's resource and Deployment
CONDITION = f"target-health.albmembership.io/{NAME}"
STRATEGY = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
GRACE_SECONDS = 30
MARGIN_SECONDS = 2.0  # load before the command and after the group settled
SETTLE_TIMEOUT = 300.0
SAMPLE_SECONDS = 0.1
WRITES = ("AddServersToServerGroup", "RemoveServersFromServerGroup")
SCENARIOS = ("rollout", "scale-down", "drain")
MODES: dict[str, dict[str, Any]] = {
    "no-operator": {"registrar": ("--register", "--remove-on", "deleted")},
    "naive": {"registrar": ("--register", "--remove-on", "terminating")},
    "remove-only": {"registrar": ("--register", "--remove-on", "never"), "operator": {"gate": False}},
    "remove+gate": {"registrar": ("--register", "--remove-on", "never"), "operator": {"gate": True}},
    "full": {"operator": {"gate": True, "registration": {"enabled": True, "weight": 100}}, "readiness_gate": True},
}


class GroupSampler:
    """Every 0.1 s: (time, the workload's servers Available in the group, those of them whose pod can answer: not
    terminating, its containers ready)."""

    def __init__(self, bench: TrafficBench) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._bench = bench
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                servers = self._bench.emulator.group(group_id(0))["Servers"]
                available = {s["ServerId"] for s in servers if s["Status"] == "Available"}
                answering = {p.status.pod_ip for p in self._bench.pods() if can_answer(p)}
                self.samples.append((time.time(), len(available), len(available & answering)))
            except Exception:  # a slow answer: the next sample counts
                pass
            self._stop.wait(SAMPLE_SECONDS)

    def fewest(self, start: float, end: float, column: int) -> int | None:
        counts = [sample[column] for sample in self.samples if start <= sample[0] <= end]
        return min(counts) if counts else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def can_answer(pod: Any) -> bool:
    conditions = pod.status.conditions or []
    containers_ready = any(c.type == "ContainersReady" and c.status == "True" for c in conditions)
    return pod.metadata.deletion_timestamp is None and containers_ready and bool(pod.status.pod_ip)


class TrafficBench(ExposureBench):
    def subnets(self) -> list[str]:
        return [node.subnet for node in self.cluster.real]

    def deployment(self, readiness_gate: bool) -> dict[str, Any]:
        dep = workload_deployment(NAME, REPLICAS, node=None, grace=GRACE_SECONDS)
        labels = {"bench-member": "true", "bench-group": group_id(0)}
        dep["metadata"]["labels"] = labels
        dep["spec"]["strategy"] = STRATEGY
        dep["spec"]["template"]["metadata"]["labels"].update(labels)
        if readiness_gate:
            dep["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": CONDITION}]
        return dep

    def pods(self) -> list[Any]:
        return list(self.core.list_namespaced_pod(NS, label_selector="bench-member=true").items)

    def settled(self, replicas: int) -> bool:
        """The Deployment complete, no pod terminating, and the group's servers exactly the live pods' (Available)."""
        if not self.deployment_done(replicas):
            return False
        pods = self.pods()
        if any(p.metadata.deletion_timestamp for p in pods) or len(pods) != replicas:
            return False
        live = {p.status.pod_ip for p in pods}
        servers = {s["ServerId"]: s["Status"] for s in self.emulator.group(group_id(0))["Servers"]}
        return set(servers) == live and set(servers.values()) == {"Available"}

    def setup(self, mode: str, index: int) -> list[Any]:
        """An empty group, the mode's controllers, the Deployment Ready and in the group; returns the controllers."""
        spec = MODES[mode]
        self.unregister_gate()  # clearing the last run's pods must not pass a gate
        self._drop_memberships()
        self._clear("bench-member=true")
        self.emulator.admin("POST", "reset")
        self.emulator.admin("PUT", "behaviour", BEHAVIOUR)
        self.emulator.add_group(group_id(0), [])
        self.url = open_listener(self.emulator, group_id(0), self.subnets())
        controllers = []
        if "registrar" in spec:
            controllers.append(self.start_controller("naive", f"{mode}-{index}-registrar", extra=spec["registrar"]))
        operator = spec.get("operator")
        if operator is not None:
            port = free_port() if operator["gate"] else None
            ctl = self.start_controller("operator", f"{mode}-{index}-operator", 40, extra=gate_flags(port))
            controllers.append(ctl)
            self.membership(operator["gate"], operator.get("registration"))
            if port is not None:  # after the resource, as bench/exposure.py does: the probe pod must be watched
                self.register_gate(ctl, port)
        self.apps.create_namespaced_deployment(NS, self.deployment(bool(spec.get("readiness_gate"))))
        self._wait(lambda: self.settled(REPLICAS), f"{REPLICAS} pods Ready and in the group", SETTLE_TIMEOUT)
        return controllers

    def drain_node(self) -> str:
        """The real node with the most of the workload's pods."""
        per_node = Counter(p.spec.node_name for p in self.pods())
        return per_node.most_common(1)[0][0]

    def scenario(self, name: str, replicas: int) -> dict[str, Any]:
        sampler = GroupSampler(self)
        terminating = TerminationWatch(self.api)
        terminating.ready.wait(30)
        load = Load(self.url, rate=RATE, max_seconds=SETTLE_TIMEOUT + 60).start()
        time.sleep(MARGIN_SECONDS)
        started = time.time()
        node = None
        if name == "rollout":
            self.cluster.kubectl("rollout", "restart", "-n", NS, f"deployment/{NAME}")
        elif name == "scale-down":
            self.apps.patch_namespaced_deployment_scale(NAME, NS, {"spec": {"replicas": replicas}})
        else:
            node = self.drain_node()
            self.cluster.kubectl(
                "drain", node, "--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={SETTLE_TIMEOUT:.0f}s"
            )
        done = self._wait(lambda: self.settled(replicas), f"{name} settled", SETTLE_TIMEOUT, fail=False, every=0.2)
        ended = time.time()
        time.sleep(MARGIN_SECONDS)
        result = load.stop()
        sampler.stop()
        terminating.stop()
        history = self.emulator.admin("GET", f"server-groups/{group_id(0)}/history")
        calls = Counter(
            f"{r['action']} {r['code']}"
            for r in self.emulator.requests()
            if started <= r["time"] <= ended and r["action"] in WRITES
        )
        if node is not None:
            self.cluster.kubectl("uncordon", node)
        fewest = (sampler.fewest(started, ended, 1), sampler.fewest(started, ended, 2))
        out = figures(name, result, started, ended, done, fewest, node)
        out.update(in_rotation_after_terminating(terminating.began, history, ended), calls=dict(calls))
        return out

    def run_mode(self, mode: str, index: int, scenarios: list[str]) -> list[dict[str, Any]]:  # type: ignore[override]
        controllers = self.setup(mode, index)
        out = []
        try:
            for name in scenarios:
                if name != "scale-down":  # back to the full size first (not measured)
                    self.apps.patch_namespaced_deployment_scale(NAME, NS, {"spec": {"replicas": REPLICAS}})
                    self._wait(lambda: self.settled(REPLICAS), "scaled back", SETTLE_TIMEOUT)
                replicas = SCALED_DOWN if name == "scale-down" else REPLICAS
                row = self.scenario(name, replicas)
                row.update(mode=mode, run=index)
                print(f"[traffic] {mode} run {index} {name}: {summary_line(row)}", flush=True)
                out.append(row)
        finally:
            for ctl in controllers:
                ctl.stop()
            self.controllers = [c for c in self.controllers if c not in controllers]
        return out


def figures(
    name: str,
    result: LoadResult,
    started: float,
    ended: float,
    done: bool,
    fewest: tuple[int | None, int | None],
    node: str | None,
) -> dict[str, Any]:
    samples = result.samples
    failed = [s for s in samples if not s.ok]
    kinds = Counter(s.failure or s.error or str(s.status) for s in failed)
    per_second: dict[int, list[int]] = {}
    for s in samples:
        second = int(s.sent - started + 100) - 100  # floor, also before the command
        ok_fail = per_second.setdefault(second, [0, 0])
        ok_fail[0 if s.ok else 1] += 1
    return {
        "scenario": name,
        "settled": done,
        "drained_node": node,
        "requests": len(samples),
        "failed": len(failed),
        "failed_by_kind": dict(kinds),
        "answered_after_sigterm": sum(1 for s in samples if s.draining),
        "duration_s": round(ended - started, 2),
        "fewest_available": fewest[0],
        "fewest_answering": fewest[1],
        "pods_answering": len({s.pod for s in samples if s.pod}),
        "first_failure_s": round(failed[0].sent - started, 2) if failed else None,
        "last_failure_s": round(failed[-1].sent - started, 2) if failed else None,
        "per_second": {str(k): v for k, v in sorted(per_second.items())},
    }


def in_rotation_after_terminating(
    began: dict[str, float], history: list[dict[str, Any]], ended: float
) -> dict[str, Any]:
    """Per pod seen terminating: from then to its server out of rotation (the emulator's out_of_rotation_at of the
    removal that followed it; none by the end: to the end). Positive: the server took requests while its pod was
    going away. A gated deletion is negative: out before the pod was told to go."""
    lags = []
    for ip, at in began.items():
        # The removal of this pod's server: the last one called before the scenario ended (a run's pods do not
        # share addresses; the emulator's reset at each run's start forgets the last run's).
        records = [r for r in history if r["ServerId"] == ip and r["removing_at"] <= ended]
        out = max(records, key=lambda r: r["removing_at"])["out_of_rotation_at"] if records else None
        lags.append((out if out is not None else ended) - at)
    lags.sort()
    return {
        "terminating_pods": len(lags),
        "exposed_pods": sum(1 for lag in lags if lag > 0),
        "in_rotation_p50_s": round(statistics.median(lags), 2) if lags else None,
        "in_rotation_max_s": round(lags[-1], 2) if lags else None,
    }


def summary_line(row: dict[str, Any]) -> str:
    return (
        f"{row['failed']} failed of {row['requests']} {row['failed_by_kind'] or ''}, "
        f"{row['answered_after_sigterm']} after SIGTERM, {row['duration_s']} s, fewest Available "
        f"{row['fewest_available']} (answering {row['fewest_answering']}), {row['exposed_pods']} of "
        f"{row['terminating_pods']} terminating pods in rotation (p50/max "
        f"{row['in_rotation_p50_s']}/{row['in_rotation_max_s']} s), "
        f"{row['calls']}" + ("" if row["settled"] else " (NOT SETTLED)")
    )


def cell(rows: list[dict[str, Any]], key: str, digits: int = 0) -> str:
    """The median of ``key`` over ``rows``, and the range when they differ."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    text = f"{statistics.median(values):.{digits}f}"
    return text if min(values) == max(values) else f"{text} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def table(data: dict[str, Any]) -> str:
    rows = data["runs"]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    lines = [
        "# Failed requests per mode, on real nodes",
        "",
        f"Machine: {data['machine']}. Source {data['source']}, {data['date']}. {REPLICAS} replicas on "
        f"{data['real_nodes']} real nodes, {RATE:g} requests/s through the emulator's data plane, jobs 1-2 s; "
        f"medians of {data['runs_per_mode']} runs (the range in brackets). Method: bench/traffic.py's docstring.",
        "",
        "| scenario | mode | failed requests | of | answered after SIGTERM | duration s | fewest Available | "
        "fewest answering | pods in rotation while terminating | for p50 s | max s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        for mode in modes:
            chosen = [r for r in rows if r["mode"] == mode and r["scenario"] == name]
            if not chosen:
                continue

            unsettled = sum(1 for r in chosen if not r["settled"])
            figures_ = " | ".join(
                cell(chosen, key, digits)
                for key, digits in (
                    ("failed", 0), ("requests", 0), ("answered_after_sigterm", 0), ("duration_s", 1),
                    ("fewest_available", 0), ("fewest_answering", 0), ("exposed_pods", 0),
                    ("in_rotation_p50_s", 1), ("in_rotation_max_s", 1),
                )
            )  # fmt: skip
            note = f" {unsettled} unsettled" if unsettled else ""
            lines.append(f"| {name} | {mode} | {figures_} |{note}")
    lines += ["", "Failures by kind, and the calls the emulator answered by code (all runs, summed):", ""]
    for name in SCENARIOS:
        for mode in modes:
            kinds: Counter[str] = Counter()
            calls: Counter[str] = Counter()
            for r in rows:
                if r["mode"] == mode and r["scenario"] == name:
                    kinds.update(r["failed_by_kind"])
                    calls.update(r.get("calls", {}))
            if kinds or calls:
                lines.append(f"- {name}, {mode}: failures {dict(kinds) or 'none'}; calls {dict(sorted(calls.items()))}")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["runs"] if r["run"] == 0]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(
        len(SCENARIOS), len(modes), figsize=(3.2 * len(modes), 2.6 * len(SCENARIOS)), squeeze=False
    )
    for i, name in enumerate(SCENARIOS):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            row = next((r for r in rows if r["mode"] == mode and r["scenario"] == name), None)
            if row is None:
                ax.set_axis_off()
                continue
            seconds = [int(k) for k in row["per_second"]]
            ax.plot(seconds, [v[0] for v in row["per_second"].values()], label="answered", color="tab:green")
            ax.plot(seconds, [v[1] for v in row["per_second"].values()], label="failed", color="tab:red")
            ax.axvline(0, color="grey", linewidth=0.5)
            ax.set_title(f"{name}, {mode}: {row['failed']} failed", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(SCENARIOS) - 1:
                ax.set_xlabel("s since the command", fontsize=7)
            if j == 0:
                ax.set_ylabel("requests/s", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(data: dict[str, Any]) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "traffic.json").write_text(json.dumps(data, indent=1) + "\n")
    text = table(data)
    (RESULTS / "traffic.md").write_text(text)
    plot(data, RESULTS / "traffic.png")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="which to run, in this order")
    parser.add_argument("--log-dir", type=Path, help="keep the controllers' logs here (default: a temporary folder)")
    parser.add_argument("--real-nodes", type=int, default=2)
    parser.add_argument("--source", help="a git revision to benchmark (default: the working tree)")
    parser.add_argument("--table-only", action="store_true", help="rebuild traffic.md and .png from traffic.json")
    args = parser.parse_args()
    if args.table_only:
        print(write(json.loads((RESULTS / "traffic.json").read_text())))
        return 0
    # A SIGTERM ends the run through its finally: the cluster's real nodes are stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    modes, scenarios = args.modes.split(","), args.scenarios.split(",")
    for asked, known in ((modes, MODES), (scenarios, SCENARIOS)):
        unknown = [a for a in asked if a not in known]
        if unknown:
            parser.error(f"unknown {unknown}: choose from {', '.join(known)}")
    with tempfile.TemporaryDirectory(prefix="albm-traffic-") as tmp_dir:
        tmp = Path(tmp_dir)
        src, source = source_tree(args.source, tmp)
        log_dir = args.log_dir or tmp / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        bench = TrafficBench(tmp, log_dir, SETTLE_TIMEOUT, src, nodes=1, real_nodes=args.real_nodes)
        for subnet in bench.subnets():
            assert ipaddress.ip_network(subnet).is_private, subnet
        data: dict[str, Any] = {
            "machine": machine(),
            "source": source,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "real_nodes": args.real_nodes,
            "runs_per_mode": args.runs,
            "max_wait_seconds": MAX_WAIT_SECONDS,
            "runs": [],
        }
        try:
            for index in range(args.runs):  # rounds: each mode once per round, so the noise falls on all
                for mode in modes:
                    data["runs"].extend(bench.run_mode(mode, index, scenarios))
                    write(data)
        finally:
            bench.close()
    print(write(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
