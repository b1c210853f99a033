"""Failed requests during a rollout, a scale-down and a node drain, per mode: real pods, real requests.

Two real nodes (a kubelet and a containerd each, localcluster/realnode.py) run a Deployment of 20 replicas of the
workload image (workload/albm_workload.py: answers with its pod name, closes its listener on SIGTERM and finishes
the requests in flight), with a readiness probe, no preStop hook, RollingUpdate maxSurge 25% maxUnavailable 0, spread
over the nodes, and a PodDisruptionBudget of maxUnavailable 25%. The emulator's server group holds the pods'
servers; its data plane (alb_emulator/dataplane.py, the model in docs/emulator.md) forwards each request of the load
generator (alb_emulator/loadgen.py: 200 requests/s, open loop, each answered after 0.1 s by the pod, loopback and
the nodes' bridges only) to a server in rotation. Jobs take 1-2 s (bench/run.py's BEHAVIOUR, with its flow
control); a server being removed still gets requests until its job ends (the emulator's default).

Modes (what puts servers into the group and what takes them out):
  no-operator   no controller of this project: the stand-in registrar (bench/naive.py --register --remove-on
                deleted) adds each pod's server once the pod is Ready and removes it once the pod is gone from the
                API (a group kept in step with the pod list, after the fact)
  naive         the same registrar's adds, and each terminating pod's server removed at once, one call each
                (bench/naive.py: how existing controllers do it)
  remove-only   the registrar adds; the operator removes (no deletionGate, no registration)
  remove+gate   the registrar adds; the operator removes, with the deletion gate (the chart's webhook)
  full          the operator alone: registration, the readiness gate in the pods, the deletion gate
The registrar sends one call per group at a time, taking every change of its kind that waits: the rows other than
full depend on it (its adds lag a pod's Ready by a job or two; it is no better or worse than that).

Each run of a mode starts from an empty group and a new Deployment (20 pods Ready and their servers Available),
then: a rolling update (`kubectl rollout restart`), a scale-down to 10, a scale back to 20 (not measured), and a
drain of one real node (`kubectl drain`, evictions within the budget; then uncordon). Each is measured from its
command until the group settled (the Deployment complete, no pod terminating, the group's servers exactly the live
pods', Available), with the load from 2 s before to 2 s after. Figures per scenario:
  failed        requests the client got no answer below 500 to (the proxy's 5xx, or the client's own refused,
                reset, timeout), from the command to the end; the 2 s before the command separately
  after SIGTERM requests a pod answered during its drain (the workload marks them X-Draining: 1): in flight when
                SIGTERM came
  done          the Deployment complete (`rollout`: updated, available, no old pod; the others: the replicas
                available); settled: the group too (the registrar's or the operator's last change done)
  fewest        fewest of the workload's servers in rotation (Available, Configuring or Removing with a weight:
                what the proxy sends requests to), and of those fewest whose pod can answer (not terminating, its
                containers ready): sampled every 0.1 s
  exposed       pods seen terminating while their server was in rotation, and how long it stayed (to the
                emulator's out_of_rotation_at; negative: out before the pod was told to go, as with the gate)
  calls         AddServersToServerGroup and RemoveServersFromServerGroup the emulator answered, by code; and the
                deletion gate's answers (albm_gate_outcomes_total) during the scenario

    .venv/bin/python bench/traffic.py --runs 3 --source HEAD
    .venv/bin/python bench/traffic.py --runs 1 --modes full,no-operator --scenarios rollout --out /tmp/trial
    .venv/bin/python bench/traffic.py --table-only

Only a whole run (every mode and scenario, --runs 3 or more) writes bench/results/traffic.json (every run),
traffic.md (medians over runs) and traffic.png (requests and failures per second, per scenario and mode, first
run); a partial one writes them to --out (or only prints the table). --source pins the operator, the emulator and the
CRDs; the harness (bench/, tests/support/, workload/) is the work tree's.
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
from exposure import MAX_WAIT_SECONDS, ExposureBench, TerminationWatch, gate_flags, metrics_text
from run import BEHAVIOUR, NS, RESULTS, group_id, machine, source_tree
from tests.support.realnode import workload_deployment
from tests.support.traffic import Load, client_timeout, failed, kind, open_listener

from alb_emulator.loadgen import LoadResult
from localcluster.cluster import free_port

REPLICAS = 20
SCALED_DOWN = 10
RATE = 200.0
SERVICE_SECONDS = 0.1  # each request's time in the pod (the workload's ?delay=): some are in flight at SIGTERM
NAME = "web-0"  # ExposureBench.membership's resource and Deployment
CONDITION = f"target-health.albmembership.io/{NAME}"
STRATEGY = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
BUDGET = {"maxUnavailable": "25%"}
GRACE_SECONDS = 30
MARGIN_SECONDS = 2.0  # load before the command and after the group settled
COMMAND_TIMEOUT = 300.0  # kubectl drain's --timeout
SETTLE_TIMEOUT = 300.0  # from the command's end to the group settled
SAMPLE_SECONDS = 0.1
IN_ROTATION = ("Available", "Configuring", "Removing")  # dataplane.in_rotation with removing_gets_requests
WRITES = ("AddServersToServerGroup", "RemoveServersFromServerGroup")
SCENARIOS = ("rollout", "scale-down", "drain")
MODES: dict[str, dict[str, Any]] = {
    "no-operator": {"registrar": ("--register", "--remove-on", "deleted")},
    "naive": {"registrar": ("--register", "--remove-on", "terminating")},
    "remove-only": {"registrar": ("--register", "--remove-on", "never"), "operator": {"gate": False}},
    "remove+gate": {"registrar": ("--register", "--remove-on", "never"), "operator": {"gate": True}},
    "full": {"operator": {"gate": True, "registration": {"enabled": True, "weight": 100}}, "readiness_gate": True},
}
FULL_RUNS = 3  # a run of every mode and scenario this many times (or more) writes bench/results


class GroupSampler:
    """Every 0.1 s: (time, the workload's servers in rotation, those of them whose pod can answer), and every server
    ever seen in rotation. A failed sample is counted, not fatal (an API server or emulator slow to answer)."""

    def __init__(self, bench: TrafficBench) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self.seen: set[str] = set()
        self.errors = 0
        self._bench = bench
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            due = time.monotonic() + SAMPLE_SECONDS
            try:
                servers = self._bench.emulator.group(group_id(0))["Servers"]
                pods = self._bench.pods()
            except Exception as exc:  # counted and shown; the next sample counts
                self.errors += 1
                print(f"[traffic] a sample failed: {type(exc).__name__}: {exc}", flush=True)
            else:
                rotation = {s["ServerId"] for s in servers if s["Status"] in IN_ROTATION and s["Weight"] > 0}
                answering = {p.status.pod_ip for p in pods if can_answer(p)}
                self.seen |= rotation
                self.samples.append((time.time(), len(rotation), len(rotation & answering)))
            self._stop.wait(max(0.0, due - time.monotonic()))

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
    url = ""
    operator: Any = None  # the mode's operator process (bench/run.py's Controller), if it has one

    def gate_outcomes(self) -> Counter[str]:
        """The operator's albm_gate_outcomes_total by outcome (nothing without an operator)."""
        if self.operator is None:
            return Counter()
        return Counter(
            {
                name.split('outcome="')[1].rstrip('"}'): int(value)
                for name, value in metrics_text(self.operator).items()
                if name.startswith("albm_gate_outcomes_total{")
            }
        )

    def subnets(self) -> list[str]:
        return [node.subnet for node in self.cluster.real]

    def deployment(self, readiness_gate: bool) -> dict[str, Any]:
        dep = workload_deployment(NAME, REPLICAS, node=None, grace=GRACE_SECONDS)
        labels = {"bench-member": "true", "bench-group": group_id(0)}
        dep["metadata"]["labels"] = labels
        dep["spec"]["strategy"] = STRATEGY
        template = dep["spec"]["template"]
        template["metadata"]["labels"].update(labels)
        # Half on each node (best effort: a drained node's pods must still find a place).
        template["spec"]["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": NAME}},
            }
        ]
        if readiness_gate:
            template["spec"]["readinessGates"] = [{"conditionType": CONDITION}]
        return dep

    def budget(self) -> None:
        body = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": NAME},
            "spec": {**BUDGET, "selector": {"matchLabels": {"app": NAME}}},
        }
        self.cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(body))

    def pods(self) -> list[Any]:
        return list(self.core.list_namespaced_pod(NS, label_selector="bench-member=true").items)

    def done(self, replicas: int) -> bool:
        """The Deployment complete (updated and available, nothing else) and no pod of it terminating."""
        if not self.deployment_done(replicas):
            return False
        pods = self.pods()
        return len(pods) == replicas and not any(p.metadata.deletion_timestamp for p in pods)

    def settled(self, replicas: int) -> bool:
        """Done, and the group's servers exactly the live pods', Available."""
        if not self.done(replicas):
            return False
        live = {p.status.pod_ip for p in self.pods()}
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
        self.url = open_listener(self.emulator, group_id(0), self.subnets()) + f"?delay={SERVICE_SECONDS}"
        self.budget()
        controllers = []
        self.operator = None
        if "registrar" in spec:
            controllers.append(self.start_controller("naive", f"{mode}-{index}-registrar", extra=spec["registrar"]))
        operator = spec.get("operator")
        if operator is not None:
            port = free_port() if operator["gate"] else None
            ctl = self.start_controller("operator", f"{mode}-{index}-operator", 40, extra=gate_flags(port))
            controllers.append(ctl)
            self.operator = ctl
            self.membership(operator["gate"], operator.get("registration"))
            if port is not None:  # after the resource, as bench/exposure.py does: the probe pod must be watched
                self.register_gate(ctl, port)
        self.apps.create_namespaced_deployment(NS, self.deployment(bool(spec.get("readiness_gate"))))
        self._wait(lambda: self.settled(REPLICAS), f"{REPLICAS} pods Ready and in the group", SETTLE_TIMEOUT)
        return controllers

    def command(self, name: str, replicas: int) -> str | None:
        """Starts the scenario; returns the node drained, if any (kubectl drain returns once it evicted them all)."""
        if name == "rollout":
            self.cluster.kubectl("rollout", "restart", "-n", NS, f"deployment/{NAME}")
            return None
        if name == "scale-down":
            self.apps.patch_namespaced_deployment_scale(NAME, NS, {"spec": {"replicas": replicas}})
            return None
        node = Counter(p.spec.node_name for p in self.pods()).most_common(1)[0][0]
        self.cluster.kubectl(
            "drain", node, "--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={COMMAND_TIMEOUT:.0f}s"
        )
        return node

    def scenario(self, name: str, replicas: int) -> dict[str, Any]:
        sampler = GroupSampler(self)
        terminating = TerminationWatch(self.api)
        if not terminating.ready.wait(30):
            raise RuntimeError("the pod watch did not list within 30 s")
        before = {p.status.pod_ip for p in self.pods()}
        on_node: Counter[str] = Counter(p.spec.node_name for p in self.pods())
        # Long enough for the slowest scenario: the drain's own timeout, the settle, the margins.
        bound = COMMAND_TIMEOUT + SETTLE_TIMEOUT + 4 * MARGIN_SECONDS + 30
        load = Load(self.url, rate=RATE, max_seconds=bound, request_timeout=client_timeout(self.emulator)).start()
        loaded = time.time()
        outcomes = self.gate_outcomes()
        node = None
        try:
            time.sleep(MARGIN_SECONDS)
            started = time.time()
            node = self.command(name, replicas)
            done_at = None
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while time.monotonic() < deadline:
                if done_at is None and self.done(replicas):
                    done_at = time.time()
                if done_at is not None and self.settled(replicas):
                    break
                time.sleep(0.2)
            ended = time.time()
            settled = done_at is not None and self.settled(replicas)
            time.sleep(MARGIN_SECONDS)
        finally:
            result = load.stop()
            sampler.stop()
            terminating.stop()
            if node is not None:
                self.cluster.kubectl("uncordon", node)
        history = self.emulator.admin("GET", f"server-groups/{group_id(0)}/history")
        gate = self.gate_outcomes()
        gate.subtract(outcomes)
        proxy = self.emulator.admin("GET", f"server-groups/{group_id(0)}/traffic?since={loaded - 1}&events=none")
        calls = Counter(
            f"{r['action']} {r['code']}"
            for r in self.emulator.requests()
            if started <= r["time"] <= ended and r["action"] in WRITES
        )
        out = figures(name, result, started, ended, done_at, settled)
        out.update(
            in_rotation_after_terminating(terminating.began, history, sampler.seen, ended),
            fewest_in_rotation=sampler.fewest(started, ended, 1),
            fewest_answering=sampler.fewest(started, ended, 2),
            sampler_errors=sampler.errors,
            drained_node=node,
            evicted=on_node[node] if node else None,
            leaving=len(before),
            calls=dict(calls),
            gate_outcomes={k: v for k, v in gate.items() if v},
            proxy_requests=proxy["totals"]["requests"],
            proxy_ok=proxy["totals"]["ok"],
        )
        return out

    def measure(self, mode: str, index: int, scenarios: list[str]) -> list[dict[str, Any]]:
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
    name: str, result: LoadResult, started: float, ended: float, done_at: float | None, settled: bool
) -> dict[str, Any]:
    samples = [s for s in result.samples if s.sent >= started]
    warmup = [s for s in result.samples if s.sent < started]
    bad = failed(samples)
    per_second: dict[int, list[int]] = {}
    for s in result.samples:
        second = int(s.sent - started + 100) - 100  # floor, also before the command
        per_second.setdefault(second, [0, 0])[0 if s.ok else 1] += 1
    return {
        "scenario": name,
        "settled": settled,
        "requests": len(samples),
        "failed": len(bad),
        "failed_before_command": len(failed(warmup)),
        "failed_by_kind": dict(Counter(kind(s) for s in bad)),
        "answered_after_sigterm": sum(1 for s in samples if s.draining),
        "done_s": round(done_at - started, 2) if done_at is not None else None,
        "settled_s": round(ended - started, 2) if settled else None,
        "load_covered": bool(result.samples) and result.samples[-1].sent >= ended,
        "pods_answering": len({s.pod for s in samples if s.pod}),
        "first_failure_s": round(bad[0].sent - started, 2) if bad else None,
        "last_failure_s": round(bad[-1].sent - started, 2) if bad else None,
        # Whole seconds only: the first and last are cut by the load's start and end.
        "per_second": {str(k): v for k, v in sorted(per_second.items())[1:-1]},
    }


def in_rotation_after_terminating(
    began: dict[str, float], history: list[dict[str, Any]], seen: set[str], ended: float
) -> dict[str, Any]:
    """Per pod seen terminating whose server was in rotation during the scenario: from then to its server out of
    rotation (the emulator's out_of_rotation_at of the removal that followed; none by the end: to the end).
    Positive: the server took requests while its pod was going away; negative: out before the pod was told to go."""
    lags = []
    for ip, at in began.items():
        if ip not in seen:
            continue
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
        f"{row['failed']} failed of {row['requests']} {row['failed_by_kind'] or ''} "
        f"({row['failed_before_command']} before the command), {row['answered_after_sigterm']} after SIGTERM, "
        f"done {row['done_s']} s, settled {row['settled_s']} s, fewest in rotation {row['fewest_in_rotation']} "
        f"(answering {row['fewest_answering']}), {row['exposed_pods']} of {row['terminating_pods']} terminating pods "
        f"in rotation (p50/max {row['in_rotation_p50_s']}/{row['in_rotation_max_s']} s), evicted {row['evicted']}, "
        f"proxy {row['proxy_ok']}/{row['proxy_requests']} ok, {row['calls']}, gate {row['gate_outcomes']}"
        + ("" if row["load_covered"] else " (THE LOAD ENDED FIRST)")
    )


def cell(rows: list[dict[str, Any]], key: str, digits: int = 0) -> str:
    """The median of ``key`` over ``rows``, and the range when they differ."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    text = f"{statistics.median(values):.{digits}f}"
    return text if min(values) == max(values) else f"{text} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


COLUMNS = (  # (heading, key, digits)
    ("failed requests", "failed", 0),
    ("of", "requests", 0),
    ("answered after SIGTERM", "answered_after_sigterm", 0),
    ("done s", "done_s", 1),
    ("settled s", "settled_s", 1),
    ("fewest in rotation", "fewest_in_rotation", 0),
    ("fewest answering", "fewest_answering", 0),
    ("terminating pods in rotation", "exposed_pods", 0),
    ("for p50 s", "in_rotation_p50_s", 1),
    ("max s", "in_rotation_max_s", 1),
)


def table(data: dict[str, Any]) -> str:
    rows = data["runs"]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    runs = len({r["run"] for r in rows})
    lines = [
        "# Failed requests per mode, on real nodes",
        "",
        f"Machine: {data['machine']}. Source {data['source']}, started {data['date']}. {REPLICAS} replicas on "
        f"{data['real_nodes']} real nodes, {RATE:g} requests/s through the emulator's data plane, each 0.1 s in the "
        f"pod, jobs 1-2 s; medians of {runs} run(s), the range in brackets. Method: bench/traffic.py's docstring.",
        "",
        "| scenario | mode | " + " | ".join(c[0] for c in COLUMNS) + " | runs not settled |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name in SCENARIOS:
        for mode in modes:
            chosen = [r for r in rows if r["mode"] == mode and r["scenario"] == name]
            if chosen:
                cells = " | ".join(cell(chosen, key, digits) for _, key, digits in COLUMNS)
                unsettled = sum(1 for r in chosen if not r["settled"])
                lines.append(f"| {name} | {mode} | {cells} | {unsettled} |")
    lines += [
        "",
        "Failures by kind, the calls the emulator answered by code and the gate's answers (all runs, summed):",
        "",
    ]
    for name in SCENARIOS:
        for mode in modes:
            kinds: Counter[str] = Counter()
            calls: Counter[str] = Counter()
            gate: Counter[str] = Counter()
            before = 0
            for r in rows:
                if r["mode"] == mode and r["scenario"] == name:
                    kinds.update(r["failed_by_kind"])
                    calls.update(r["calls"])
                    gate.update(r.get("gate_outcomes", {}))
                    before += r["failed_before_command"]
            if kinds or calls:
                lines.append(
                    f"- {name}, {mode}: failures {dict(kinds) or 'none'} ({before} in the 2 s before the command); "
                    f"calls {dict(sorted(calls.items()))}" + (f"; the gate's answers {dict(gate)}" if gate else "")
                )
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["runs"] if r["run"] == 0]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(
        len(SCENARIOS), len(modes), figsize=(3.2 * len(modes), 2.6 * len(SCENARIOS)), squeeze=False, sharey=True
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


def write(data: dict[str, Any], out: Path | None) -> str:
    """The table; and with ``out``, traffic.json, .md and .png there."""
    text = table(data)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "traffic.json").write_text(json.dumps(data, indent=1) + "\n")
        (out / "traffic.md").write_text(text)
        plot(data, out / "traffic.png")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=FULL_RUNS, help="rounds of every mode (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: %(default)s")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="in this order, of: %(default)s")
    parser.add_argument("--real-nodes", type=int, default=2, help="2 or more for the drain (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="where a partial run writes its results (default: printed only)")
    parser.add_argument("--log-dir", type=Path, help="keep the controllers' logs here (default: a temporary folder)")
    parser.add_argument("--source", help="a git revision of the operator, emulator and CRDs (default: the work tree)")
    parser.add_argument("--table-only", action="store_true", help="rebuild traffic.md and .png from traffic.json")
    args = parser.parse_args()
    if args.table_only:
        print(write(json.loads((RESULTS / "traffic.json").read_text()), RESULTS))
        return 0
    modes, scenarios = args.modes.split(","), args.scenarios.split(",")
    for asked, known in ((modes, MODES), (scenarios, SCENARIOS)):
        unknown = [a for a in asked if a not in known]
        if unknown:
            parser.error(f"unknown {unknown}: choose from {', '.join(known)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.real_nodes < (2 if "drain" in scenarios else 1):
        parser.error("--real-nodes: a drain needs 2 or more (the evicted pods run on the others)")
    whole = set(modes) == set(MODES) and set(scenarios) == set(SCENARIOS) and args.runs >= FULL_RUNS
    out = RESULTS if whole else args.out
    # A SIGTERM ends the run through its finally: the cluster's real nodes are stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="albm-traffic-") as tmp_dir:
        tmp = Path(tmp_dir)
        src, source = source_tree(args.source, tmp)
        log_dir = args.log_dir or tmp / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        bench = TrafficBench(tmp, log_dir, SETTLE_TIMEOUT, src, nodes=1, real_nodes=args.real_nodes)
        try:
            for subnet in bench.subnets():
                if not ipaddress.ip_network(subnet).is_private:
                    raise RuntimeError(f"a real node's bridge {subnet} is not private: not a target")
            data: dict[str, Any] = {
                "machine": machine(),
                "source": source,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "real_nodes": args.real_nodes,
                "max_wait_seconds": MAX_WAIT_SECONDS,
                "runs": [],
            }
            for index in range(args.runs):  # rounds: each mode once per round, so the noise falls on all
                for mode in modes:
                    data["runs"].extend(bench.measure(mode, index, scenarios))
                    write(data, log_dir)  # so far: kept beside the logs if the run stops early
        finally:
            bench.close()
    print(write(data, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
