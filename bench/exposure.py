"""Deletion gate and connection draining: exposure on the rollout scenario (issue 12).

One rollout (`kubectl rollout restart` of a Deployment of 200 replicas at --scale 1, one ServerGroupMembership,
the operator at --batch-size 40) per mode: the deletion gate off or on, times connection draining off, or 30 s
with each of the emulator's UNCONFIRMED combinations (job_ends before_draining|after_draining,
configuring_while_draining false|true): 10 runs. The cluster, the emulator (jobs of 1-2 s, the same flow control)
and the operator are those of bench/run.py, whose helpers this module uses.

Per old pod:
  termination start  the first time the harness's pod watch sees its deletionTimestamp (the API server's own
                     field has second precision and is the deletion's time plus the grace period)
  out of rotation    the emulator's history: out_of_rotation_at (Draining or gone, whichever came first)
  exposure           max(0, out of rotation - termination start): how long the pod was terminating (SIGTERM
                     sent) while the load balancer still sent it new requests
  gate hold          from the operator's log, "deletion of pod ... held X.XXs" (or "let through after X.Xs"):
                     how long the API server's DELETE waited for the webhook, i.e. the deletion latency added
Per run: RemoveServersFromServerGroup calls against the bound (ceil(wave/40) per wave, a wave being one scale-down
step of the old ReplicaSet, as watched), the time to the rollout's end (the Deployment complete: every replica
updated and available, no old replica left) and to the last old server out of rotation.

    .venv/bin/python bench/exposure.py --scale 1 --source HEAD
    .venv/bin/python bench/exposure.py --scale 1 --source HEAD --batch-size 200 --append --modes gate-drain-off,...
    .venv/bin/python bench/exposure.py --table-only

Writes bench/results/exposure.json (every run, with its per-pod figures) and bench/results/exposure.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import watch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness
from run import BEHAVIOUR, NS, RESULTS, Bench, Controller, group_id, machine, percentile, source_tree
from tests.support.gate import webhook_configuration

from localcluster.cluster import free_port

JOB_SECONDS_MAX = BEHAVIOUR["job_seconds"] + BEHAVIOUR["job_jitter_seconds"]  # one job's duration, at most
DRAIN_SECONDS = 30
MAX_WAIT_SECONDS = 25
GATE_BATCH = 40
WEBHOOK = "albm-bench-gate"
SECRET = "albm-bench-webhook-tls"
HOLD = re.compile(r"deletion of pod (\S+?)/(\S+) (?:held (\d+\.\d+)s|let through after (\d+\.\d+)s)")


def modes() -> list[dict[str, Any]]:
    drains: list[dict[str, Any]] = [{"drain": None}]
    for job_ends in ("before_draining", "after_draining"):
        for configuring in (False, True):
            drains.append({"drain": DRAIN_SECONDS, "job_ends": job_ends, "configuring_while_draining": configuring})
    out = []
    for d in drains:
        for gate in (False, True):
            out.append({"gate": gate, **d})
    return out


def drain_label(mode: dict[str, Any]) -> str:
    if mode["drain"] is None:
        return "off"
    ends = "before" if mode["job_ends"] == "before_draining" else "after"
    configuring = str(mode["configuring_while_draining"]).lower()
    return f"{mode['drain']} s, job ends {ends} draining, configuring while draining {configuring}"


def mode_key(mode: dict[str, Any]) -> str:
    if mode["drain"] is None:
        drain = "drain-off"
    else:
        ends = "before" if mode["job_ends"] == "before_draining" else "after"
        drain = f"drain{mode['drain']}-{ends}-cwd{str(mode['configuring_while_draining']).lower()}"
    return f"{'gate' if mode['gate'] else 'nogate'}-{drain}"


class TerminationWatch:
    """Per old pod: its name and IP, and when the harness first saw its deletionTimestamp (client clock). One watch
    continued from its resourceVersion (no gap between reconnects, unlike a fresh watch every few seconds)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.began: dict[str, float] = {}  # pod IP -> first seen terminating
        self.names: dict[str, str] = {}  # pod name -> IP
        self.deletion_timestamp: dict[str, str] = {}  # pod IP -> the API server's field
        self._core = kubernetes.client.CoreV1Api(api)
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                if rv is None:
                    listed = self._core.list_namespaced_pod(NS, label_selector="bench-member=true")
                    for pod in listed.items:
                        self._see(pod)
                    rv = listed.metadata.resource_version
                    self.ready.set()
                for event in w.stream(
                    self._core.list_namespaced_pod,
                    NS,
                    label_selector="bench-member=true",
                    resource_version=rv,
                    timeout_seconds=60,
                ):
                    obj = event["object"]
                    self._see(obj)
                    rv = obj.metadata.resource_version
                    if self._stop.is_set():
                        break
            except kubernetes.client.ApiException as exc:
                if exc.status == 410:
                    rv = None
                time.sleep(0.1)
            except Exception:  # a reconnect is fine
                time.sleep(0.1)

    def _see(self, pod: Any) -> None:
        now = time.time()
        ip = pod.status.pod_ip if pod.status else None
        if ip:
            self.names.setdefault(pod.metadata.name, ip)
        if pod.metadata.deletion_timestamp and ip and ip not in self.began:
            self.began[ip] = now
            self.deletion_timestamp[ip] = pod.metadata.deletion_timestamp.isoformat()

    def stop(self) -> None:
        self._stop.set()


class ReplicaSetWatch:
    """Every change of the ReplicaSets' spec.replicas, with the time: the old one's scale-down steps are the waves.
    ``statuses``: every change of (spec.replicas, status.replicas, status.availableReplicas, status.observedGeneration
    equal to metadata.generation), with the time."""

    def __init__(self, apps: kubernetes.client.AppsV1Api) -> None:
        self.steps: dict[str, list[tuple[float, int]]] = {}
        self.statuses: dict[str, list[tuple[float, int, int, int, bool]]] = {}
        self._apps = apps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for rs in self._apps.list_namespaced_replica_set(NS, label_selector="bench-member=true").items:
                    seen = self.steps.setdefault(rs.metadata.name, [])
                    if not seen or seen[-1][1] != rs.spec.replicas:
                        seen.append((time.time(), rs.spec.replicas))
                    st = rs.status
                    now = (
                        rs.spec.replicas,
                        st.replicas or 0,
                        st.available_replicas or 0,
                        (st.observed_generation or 0) == rs.metadata.generation,
                    )
                    history = self.statuses.setdefault(rs.metadata.name, [])
                    if not history or history[-1][1:] != now:
                        history.append((time.time(), *now))
            except Exception:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def gate_flags(gate_port: int | None) -> tuple[str, ...]:
    """The operator's flags for the deletion gate's webhook on loopback ``gate_port`` (none: no webhook)."""
    if gate_port is None:
        return ()
    return (
        "--webhook-port", str(gate_port), "--webhook-hosts", "127.0.0.1", "--webhook-secret", SECRET,
        "--webhook-configuration", WEBHOOK, "--leader-election-namespace", NS,
    )  # fmt: skip


def scale_steps(steps: dict[str, list[tuple[float, int]]], names: list[str], down: bool = True) -> list[int]:
    """The sizes of the named ReplicaSets' scale-down steps (``down``) or scale-up steps, as ReplicaSetWatch saw
    them: an old ReplicaSet's scale-down steps are a rollout's waves."""
    out: list[int] = []
    for name in names:
        for (_, a), (_, b) in itertools.pairwise(steps.get(name, [])):
            if (b < a) if down else (b > a):
                out.append(abs(a - b))
    return out


def metrics_text(ctl: Controller) -> dict[str, float]:
    """The gate's and exposure's series from /metrics."""
    _, body = ctl.get("/metrics", timeout=10)
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("albm_gate_", "albm_exposure_seconds")) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class ExposureBench(Bench):
    def start_operator(self, name: str, batch: int, gate_port: int | None) -> Controller:
        """The operator as bench/run.py starts it, with the webhook's flags when the gate is on."""
        return self.start_controller("operator", name, batch, extra=gate_flags(gate_port))

    def membership(self, gate: bool, registration: dict[str, Any] | None = None) -> None:
        """The one ServerGroupMembership of web-0; ``registration``: its spec.registration (absent: remove-only)."""
        spec: dict[str, Any] = {
            "serverGroupId": group_id(0),
            "podSelector": {"matchLabels": {"app": "web-0"}},
            "backend": {"serverType": "Ip", "port": 8080},
            "deletionPolicy": "Retain",  # tearing the run down must not remove anything
        }
        if gate:
            spec["deletionGate"] = {"enabled": True, "maxWaitSeconds": MAX_WAIT_SECONDS}
        if registration is not None:
            spec["registration"] = registration
        body = {
            "apiVersion": "albmembership.io/v1alpha1",
            "kind": "ServerGroupMembership",
            "metadata": {"name": "web-0"},
            "spec": spec,
        }
        self.cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(body))

    def register_gate(self, ctl: Controller, port: int) -> None:
        """The configuration registered, the operator's CA in it, and one non-member deletion answered by the
        operator (so the API server really reaches the webhook, rather than ignoring a failure)."""
        admission = kubernetes.client.AdmissionregistrationV1Api(self.api)
        self.unregister_gate()
        admission.create_validating_webhook_configuration(webhook_configuration(WEBHOOK, NS, port))

        def trusted() -> bool:
            hook = admission.read_validating_webhook_configuration(WEBHOOK).webhooks[0]
            return bool(hook.client_config.ca_bundle)

        self._wait(trusted, "the caBundle written by the operator", 60)
        for attempt in range(20):
            probe = f"gate-probe-{attempt}"
            self.core.create_namespaced_pod(
                NS,
                {
                    "metadata": {"name": probe, "labels": {"bench-probe": "true"}},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/probe:1"}]},
                },
            )
            self.core.delete_namespaced_pod(probe, NS, grace_period_seconds=0)
            answered = metrics_text(ctl).get('albm_gate_outcomes_total{outcome="not-a-member"}', 0)
            if answered >= 1:
                return
            time.sleep(1)
        raise RuntimeError("the API server does not reach the webhook")

    def unregister_gate(self) -> None:
        admission = kubernetes.client.AdmissionregistrationV1Api(self.api)
        try:
            admission.delete_validating_webhook_configuration(WEBHOOK)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise

    def deployment_done(self, replicas: int) -> bool:
        d = self.apps.read_namespaced_deployment("web-0", NS)
        s = d.status
        return (
            (s.observed_generation or 0) >= d.metadata.generation
            and (s.updated_replicas or 0) == replicas
            and (s.replicas or 0) == replicas
            and (s.available_replicas or 0) == replicas
        )

    def run_mode(self, sc: harness.Scenario, mode: dict[str, Any], batch: int, index: int) -> dict[str, Any]:
        self.unregister_gate()  # clearing the last run's pods must not pass a gate
        groups = self.prepare(sc)
        gid = group_id(0)
        behaviour = {
            **BEHAVIOUR,
            "job_ends": mode.get("job_ends", "before_draining"),
            "configuring_while_draining": mode.get("configuring_while_draining", False),
            # The runs in bench/results/exposure.md were made when the emulator showed a draining server as
            # Draining (now its GWLB-like drain_status; the default, Removing, is the ALB SDK's enum): kept so.
            "drain_status": "Draining",
        }
        self.emulator.admin("PUT", "behaviour", behaviour)
        if mode["drain"] is not None:
            self.emulator.admin(
                "PUT", f"server-groups/{gid}", {"connection_drain": {"enabled": True, "timeout_seconds": mode["drain"]}}
            )
        self.membership(mode["gate"])
        gate_port = free_port() if mode["gate"] else None
        ctl = self.start_operator(f"exposure-{mode_key(mode)}-{index}", batch, gate_port)
        leaving = set(groups[gid])
        self._wait(lambda: self._members() >= len(leaving), "members recorded", 300)
        if gate_port is not None:
            self.register_gate(ctl, gate_port)
        old_rs = [rs.metadata.name for rs in self.apps.list_namespaced_replica_set(NS).items]
        terminations = TerminationWatch(self.api)
        terminations.ready.wait(30)
        replicasets = ReplicaSetWatch(self.apps)
        time.sleep(0.5)
        loadavg = os.getloadavg()[0]
        started = time.time()
        self.cluster.kubectl("rollout", "restart", "-n", NS, "deployment/web-0")
        rollout_done: list[float] = []

        def done() -> bool:
            if not rollout_done and self.deployment_done(sc.replicas):
                rollout_done.append(time.time())
            if not rollout_done or not leaving <= terminations.began.keys():
                return False
            history = self.emulator.admin("GET", f"server-groups/{gid}/history")
            out = {r["ServerId"] for r in history if r["out_of_rotation_at"] is not None}
            return leaving <= out

        complete = self._wait(
            done, "the rollout done and every old server out of rotation", self.max_seconds, fail=False, every=0.2
        )
        finished = time.time()
        time.sleep(1.0)
        terminations.stop()
        replicasets.stop()
        history = self.emulator.admin("GET", f"server-groups/{gid}/history")
        requests = self.emulator.requests()
        jobs = self.emulator.admin("GET", "jobs")
        metrics = metrics_text(ctl)
        if self.dump_dir is not None:
            (self.dump_dir / f"exposure-{mode_key(mode)}-{index}.json").write_text(
                json.dumps(
                    {"requests": requests, "jobs": jobs, "history": history, "steps": replicasets.steps}, indent=1
                )
            )
        if gate_port is not None:
            self.unregister_gate()
        # Drains still under way end now (nothing else is measured), so the operator's last jobs end and it releases.
        self.emulator.admin("POST", f"server-groups/{gid}/idle", {})
        released = self._release_memberships()
        ctl.stop()
        log_text = (self.log_dir / f"{ctl.name}.log").read_text(errors="replace")
        result = measure(
            mode, batch, sc.replicas, leaving, terminations, replicasets.steps, old_rs, history, requests, jobs,
            metrics, log_text, started, finished, rollout_done[0] if rollout_done else None,
        )  # fmt: skip
        result.update(complete=complete, released_by_operator=released, loadavg=loadavg, operator_log=ctl.name)
        return result


def measure(
    mode: dict[str, Any],
    batch: int,
    replicas: int,
    leaving: set[str],
    terminations: TerminationWatch,
    steps: dict[str, list[tuple[float, int]]],
    old_rs: list[str],
    history: list[dict[str, Any]],
    requests: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    metrics: dict[str, float],
    log_text: str,
    started: float,
    finished: float,
    rollout_done: float | None,
) -> dict[str, Any]:
    began = terminations.began
    out_at: dict[str, float] = {}
    removing_at: dict[str, float] = {}
    for r in history:
        if r["ServerId"] in leaving and r["removing_at"] >= started - 60:
            removing_at.setdefault(r["ServerId"], r["removing_at"])
            if r["out_of_rotation_at"] is not None:
                out_at.setdefault(r["ServerId"], r["out_of_rotation_at"])
    accepted: dict[str, float] = {}
    for r in requests:
        if r["action"] == "RemoveServersFromServerGroup" and r.get("code") == "OK":
            for ip in r["servers"]:
                accepted.setdefault(ip, r["time"] + r["duration_ms"] / 1000)
    ip_name = {ip: name for name, ip in terminations.names.items() if ip in leaving}
    holds: dict[str, float] = {}
    timed_out: dict[str, float] = {}
    for match in HOLD.finditer(log_text):
        name = match.group(2)
        if match.group(3) is not None:
            holds[name] = float(match.group(3))
        else:
            holds[name] = timed_out[name] = float(match.group(4))
    pods: list[dict[str, Any]] = []
    for ip in sorted(leaving):
        b = began.get(ip)
        o = out_at.get(ip)
        if b is None:
            exposure = None
        elif o is None:  # never out of rotation in the run: exposed at least until its end (censored)
            exposure = finished - b
        else:
            exposure = max(0.0, o - b)
        name = ip_name.get(ip)
        pods.append(
            {
                "ip": ip,
                "pod": name,
                "termination_start": None if b is None else round(b - started, 3),
                "out_of_rotation": None if o is None else round(o - started, 3),
                "removing_at": None if ip not in removing_at else round(removing_at[ip] - started, 3),
                "accepted": None if ip not in accepted else round(accepted[ip] - started, 3),
                "exposure_s": None if exposure is None else round(exposure, 3),
                "gate_hold_s": holds.get(name) if name else None,
                "gate_timed_out": bool(name and name in timed_out),
            }
        )
    exposures = [p["exposure_s"] for p in pods if p["exposure_s"] is not None]
    hold_values = [p["gate_hold_s"] for p in pods if p["gate_hold_s"] is not None]
    accepted_after_start = [accepted[ip] - began[ip] for ip in leaving if ip in accepted and ip in began]
    # Waves: the old ReplicaSet's scale-down steps.
    old_steps = [s for name in old_rs for s in steps.get(name, [])]
    waves = scale_steps(steps, old_rs)
    removes = [r for r in requests if r["action"] == "RemoveServersFromServerGroup"]
    ok = [r for r in removes if r.get("code") == "OK"]
    out_times = [out_at[ip] for ip in leaving if ip in out_at]
    return {
        "mode": mode_key(mode),
        "gate": mode["gate"],
        "drain": drain_label(mode),
        "drain_seconds": mode["drain"],
        "job_ends": mode.get("job_ends"),
        "configuring_while_draining": mode.get("configuring_while_draining"),
        "batch_size": batch,
        "replicas": replicas,
        "pods_leaving": len(leaving),
        "pods_seen_terminating": sum(ip in began for ip in leaving),
        "pods_out_of_rotation": len(out_times),
        "exposure_s": {
            "50": percentile(exposures, 50),
            "99": percentile(exposures, 99),
            "max": max(exposures, default=None),
        },
        "exposed_pods": sum(e > 0 for e in exposures),
        "gate_holds": len(hold_values),
        "gate_timed_out": len(timed_out),
        "gate_hold_s": {
            "50": percentile(hold_values, 50),
            "99": percentile(hold_values, 99),
            "max": max(hold_values, default=None),
        },
        "accepted_after_termination_start_s": {
            "50": percentile(accepted_after_start, 50),
            "99": percentile(accepted_after_start, 99),
            "max": max(accepted_after_start, default=None),
        },
        "remove_calls": len(removes),
        "remove_calls_ok": len(ok),
        "remove_codes": {
            c: sum(r.get("code") == c for r in removes) for c in sorted({str(r.get("code")) for r in removes})
        },
        "servers_per_call": [len(r["servers"]) for r in ok],
        "remove_call_times_s": [round(r["time"] - started, 3) for r in ok],
        "waves": waves,
        "bound_calls_per_wave": sum(math.ceil(w / GATE_BATCH) for w in waves),
        "bound_calls_total": math.ceil(len(leaving) / GATE_BATCH),
        "old_rs_steps": [(round(t - started, 3), n) for t, n in old_steps],
        "rollout_s": None if rollout_done is None else rollout_done - started,
        "last_out_of_rotation_s": max(out_times) - started if out_times else None,
        "jobs": len(jobs),
        "job_seconds": sorted(
            round((j["ModifyTime"] - j["CreateTime"]) / 1000, 2) for j in jobs if j.get("ModifyTime")
        ),
        "metrics": metrics,
        "pods": pods,
    }


# -- the table ---------------------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def sets_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations that made the runs (one unless --append added more)."""
    keys = ("scale", "replicas", "batch_size", "source", "started", "seconds")
    return data.get("sets") or [{k: data.get(k) for k in keys}]


def table(data: dict[str, Any]) -> str:
    runs = data["runs"]
    lines = [
        "# Deletion gate and connection draining: exposure on the rollout (issue 12)",
        "",
        f"Rollout of a Deployment (`kubectl rollout restart`, maxSurge and maxUnavailable 25%), gate "
        f"`maxWaitSeconds: {MAX_WAIT_SECONDS}`, emulator jobs of "
        f"{BEHAVIOUR['job_seconds']:.0f}-{JOB_SECONDS_MAX:.0f} s, one run per mode. Machine: {data['machine']}.",
        "",
    ]
    for s in sets_of(data):
        lines.append(
            f"- {s['replicas']} replicas (`--scale {s['scale']}`), operator `--batch-size {s['batch_size']}`, "
            f"{s['source']}; started {s['started']}, took {s['seconds']:.0f} s"
        )
    for batch in sorted({r["batch_size"] for r in runs}):
        chosen = [r for r in runs if r["batch_size"] == batch]
        baseline = {r["drain"]: r["rollout_s"] for r in chosen if not r["gate"]}
        lines += [
            "",
            f"Operator `--batch-size {batch}`:",
            "",
            "| gate | drain | exposure p50 / p99 s | pods exposed > 0 | gate hold p50 / p99 s (timed out) | "
            "accepted after termination start p50 / p99 s | remove calls (bound: ceil(wave/40) per wave; waves) | "
            "rollout s (vs no gate) | last server out of rotation s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in chosen:
            e, h, a = r["exposure_s"], r["gate_hold_s"], r["accepted_after_termination_start_s"]
            base = baseline.get(r["drain"])
            ratio = f" ({r['rollout_s'] / base:.1f}x)" if r["gate"] and base and r["rollout_s"] else ""
            hold = f"{fmt(h['50'])} / {fmt(h['99'])} ({r['gate_timed_out']})" if r["gate"] else "-"
            unfinished = "" if r["complete"] else " (unfinished)"
            n_refused = r["remove_calls"] - r["remove_calls_ok"]
            refused = f", {n_refused} refused" if n_refused else ""
            lines.append(
                f"| {'on' if r['gate'] else 'off'} | {r['drain']} | {fmt(e['50'])} / {fmt(e['99'])} | "
                f"{r['exposed_pods']} of {r['pods_leaving']} | {hold} | {fmt(a['50'])} / {fmt(a['99'])} | "
                f"{r['remove_calls']}{refused} ({r['bound_calls_per_wave']}; {'+'.join(map(str, r['waves']))}) | "
                f"{fmt(r['rollout_s'], 1)}{ratio}{unfinished} | {fmt(r['last_out_of_rotation_s'], 1)} |"
            )
        lines += ["", *goals(chosen)]
    return "\n".join(lines) + "\n"


def goals(runs: list[dict[str, Any]]) -> list[str]:
    out = [f"Goals (batch {runs[0]['batch_size']}):"]
    limit = JOB_SECONDS_MAX + 1
    for r in runs:
        if r["gate"]:
            zero = r["exposed_pods"] == 0
            hold = r["gate_hold_s"]["99"]
            within = hold is not None and hold <= limit
            out.append(
                f"- gate, drain {r['drain']}: 0 pods exposed {'met' if zero else 'MISSED'} ({r['exposed_pods']}); "
                f"hold p99 within one job + 1 s = {limit:.1f} s {'met' if within else 'MISSED'} ({fmt(hold)} s)"
            )
        elif r["drain_seconds"]:
            acc = r["accepted_after_termination_start_s"]["99"]
            ref = next(
                (
                    x["accepted_after_termination_start_s"]["99"]
                    for x in runs
                    if not x["gate"] and not x["drain_seconds"]
                ),
                None,
            )
            figures = f"accepted p99 {fmt(acc)} s after termination start; {fmt(ref)} s with draining off"
            if r["configuring_while_draining"]:
                out.append(
                    f"- no gate, drain {r['drain']}: not applicable, the group itself refuses changes while a server "
                    f"drains ({figures})"
                )
            else:
                ok = acc is not None and acc < r["drain_seconds"]
                out.append(
                    f"- no gate, drain {r['drain']}: later waves' acceptance does not wait for draining "
                    f"{'met' if ok else 'MISSED'} ({figures}, drain {r['drain_seconds']} s)"
                )
    return out


def write(data: dict[str, Any]) -> str:
    (RESULTS / "exposure.json").write_text(json.dumps(data, indent=1))
    text = table(data)
    (RESULTS / "exposure.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=GATE_BATCH)
    parser.add_argument("--source", metavar="REV", help="run the operator of this git revision (default: work tree)")
    parser.add_argument("--modes", help="comma-separated mode keys (default: all 10), e.g. nogate-drain-off")
    parser.add_argument("--max-seconds", type=float, default=360)
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--dump", type=Path, help="write each run's emulator requests, jobs and history here")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/exposure.json)")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--append", action="store_true", help="add these runs to bench/results/exposure.json")
    args = parser.parse_args()
    if args.table_only:
        print(write(json.loads((RESULTS / "exposure.json").read_text())))
        return 0
    chosen = modes()
    if args.modes:
        wanted = args.modes.split(",")
        chosen = [m for m in chosen if mode_key(m) in wanted]
    sc = harness.scenarios(args.scale)["rollout"]
    began = time.time()
    this_set: dict[str, Any] = {
        "scale": args.scale,
        "replicas": sc.replicas,
        "batch_size": args.batch_size,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(began)),
        "seconds": 0.0,
    }
    data: dict[str, Any] = {"machine": machine(), "sets": [this_set], "runs": []}
    if args.append:
        data = json.loads((RESULTS / "exposure.json").read_text())
        data["sets"] = [*sets_of(data), this_set]
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = args.log_dir or Path(tmp) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        src, source = source_tree(args.source, Path(tmp))
        this_set["source"] = source
        print(f"[exposure] operator: {source}", flush=True)
        bench = ExposureBench(Path(tmp), log_dir, args.max_seconds, src)
        bench.dump_dir = args.dump
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
        try:
            for mode in chosen:
                print(f"[exposure] {mode_key(mode)} ...", flush=True)
                t0 = time.time()
                res = bench.run_mode(sc, mode, args.batch_size, 0)
                res["run_seconds"] = time.time() - t0
                data["runs"].append(res)
                this_set["seconds"] = time.time() - began
                summary = {k: res[k] for k in ("exposure_s", "exposed_pods", "gate_hold_s", "gate_timed_out",
                                               "remove_calls", "bound_calls_per_wave", "waves", "rollout_s",
                                               "last_out_of_rotation_s", "complete")}  # fmt: skip
                print(f"[exposure] {mode_key(mode)}: {json.dumps(summary)}", flush=True)
                if args.out:
                    args.out.write_text(json.dumps(data, indent=1))
                else:
                    write(data)
        finally:
            bench.unregister_gate()
            bench.close()
    this_set["seconds"] = time.time() - began
    if args.out:
        args.out.write_text(json.dumps(data, indent=1))
    else:
        print(write(data))
    print(f"[exposure] done in {this_set['seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
