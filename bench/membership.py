"""Full membership on the rollout: servers in rotation, exposure, time into the group, rollout time and calls.

A Deployment of 200 replicas (``--scale`` multiplies it: 0.2 is 40), RollingUpdate with maxSurge 25% and
maxUnavailable 0, terminationGracePeriodSeconds 3, is rolled with `kubectl rollout restart` and measured until the
rollout is complete (every replica updated and available, no old one left). Modes, side by side, run in rounds
(each round runs every mode once, so the machine's noise falls on all of them):
  no-lb       no readiness gate in the pods, no operator: the rollout's own duration on this cluster
  full-b<N>   the operator at --batch-size N with spec.registration {enabled: true, weight: 100} and the deletion
              gate (maxWaitSeconds 25, the webhook registered as bench/exposure.py does), the pods listing the
              readiness gate target-health.albmembership.io/web-0 (--batch-sizes, default 40 and 200)
The cluster, the emulator (jobs of 1-2 s, bench/run.py's BEHAVIOUR with its flow control), the operator's process
and the webhook are bench/run.py's and bench/exposure.py's. The group holds the old pods' servers, Available, at
the start in every mode (in no-lb nothing but the harness's sampling reads it, so the harness's load is the same).

Per run:
  fewest Available   of the workload's servers in the group during the rollout (goal: >= replicas), exactly from
                     the emulator's records (additions' available_at, removals' removing_at: a server is Removing from
                     the call on) and from sampling the group (GET server-groups/<id>, every 0.1 s; the rate reached
                     is reported)
  exposed            old pods seen terminating (the harness's pod watch first saw their deletionTimestamp) before
                     their server was out of rotation (the emulator's history out_of_rotation_at) (goal: 0)
  into the group     per new pod, from its ContainersReady True to its server Available (the emulator's additions
                     record available_at, its job's end). ContainersReady is when the harness's pod watch first saw
                     it True: its lastTransitionTime has one-second precision (RFC 3339, cut to the second), too
                     coarse for a budget of 0.25 s; figures from lastTransitionTime are reported beside it. Goal: one
                     job + 0.25 s, per pod (its own add job's duration + 0.25 s: the time to its add call accepted,
                     at most 0.25 s) and at most the longest job + 0.25 s (2.25 s)
  rollout            from `kubectl rollout restart` to the Deployment complete (goal: <= 2x no-lb's, medians)
  calls              AddServersToServerGroup and RemoveServersFromServerGroup accepted (distinct jobs), against
                     ceil(wave/batch) adds + ceil(wave/batch) removals per wave, a wave being one scale-down step of
                     the old ReplicaSet (as bench/exposure.py counts them)
  operator checks    a server added twice (two accepted adds with no removal between, or refused as already
                     there), a pod seen Ready before its server was Available, errors or tracebacks in its log

    .venv/bin/python bench/membership.py --scale 0.2 --runs 1
    .venv/bin/python bench/membership.py --scale 1 --runs 3 --source HEAD
    .venv/bin/python bench/membership.py --table-only

Writes bench/results/membership.json (every run, per pod too), membership.md (medians over runs, the goals met or
missed) and membership.png (the workload's Available servers over time, per mode).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness
from exposure import (
    HOLD,
    JOB_SECONDS_MAX,
    MAX_WAIT_SECONDS,
    ExposureBench,
    ReplicaSetWatch,
    TerminationWatch,
    fmt,
    scale_steps,
)
from run import BEHAVIOUR, NS, RESULTS, group_id, machine, percentile, source_tree
from tests.support.emulator import EmulatorProcess

from localcluster.cluster import free_port

GRACE_SECONDS = 3
STRATEGY = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
CONDITION = "target-health.albmembership.io/web-0"  # ExposureBench.membership's resource is web-0
REGISTRATION = {"enabled": True, "weight": 100}
SAMPLE_SECONDS = 0.1
SLACK_SECONDS = 0.25  # the goal: one job + 0.25 s
RATIO_GOAL = 2.0
ERROR_LINE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")


def mode_batch(mode: str) -> int | None:
    return int(mode.split("-b")[1]) if mode.startswith("full-b") else None


class PodTimeline(TerminationWatch):
    """TerminationWatch (deletionTimestamps first seen, per IP), and per pod name when the watch first saw it, its
    IP, and when it first saw ContainersReady and Ready True, with those conditions' lastTransitionTime."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        super().__init__(api)

    def _see(self, pod: Any) -> None:
        super()._see(pod)
        now = time.time()
        record = self.pods.setdefault(pod.metadata.name, {"first_seen": now})
        status = pod.status
        if status is not None and status.pod_ip:
            record.setdefault("ip", status.pod_ip)
        for c in (status.conditions if status is not None else None) or []:
            if c.status != "True" or c.type not in ("ContainersReady", "Ready"):
                continue
            key = "containers_ready" if c.type == "ContainersReady" else "ready"
            if f"{key}_seen" not in record:
                record[f"{key}_seen"] = now
                ltt = c.last_transition_time
                record[f"{key}_ltt"] = ltt.timestamp() if ltt is not None else None


class GroupSampler:
    """The group as the emulator lists it, every ``every`` seconds: (time, {ServerId: Status}), the time being the
    middle of the admin request."""

    def __init__(self, emulator: EmulatorProcess, gid: str, every: float = SAMPLE_SECONDS) -> None:
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._emulator, self._gid, self._every = emulator, gid, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            try:
                group = self._emulator.group(self._gid)
            except Exception:  # a failed answer is a missed sample; the rate reached is reported
                self._stop.wait(self._every)
                continue
            t1 = time.time()
            self.samples.append(((t0 + t1) / 2, {s["ServerId"]: s["Status"] for s in group["Servers"]}))
            self._stop.wait(max(0.0, self._every - (t1 - t0)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class MembershipBench(ExposureBench):
    def run_mode(self, sc: harness.Scenario, mode: str, index: int) -> dict[str, Any]:  # type: ignore[override]
        batch = mode_batch(mode)
        full = batch is not None
        self.unregister_gate()  # clearing the last run's pods must not pass a gate
        groups = self.prepare(sc, grace=GRACE_SECONDS, strategy=STRATEGY, readiness_gates=[CONDITION] if full else None)
        gid = group_id(0)
        old_ips = set(groups[gid])
        ctl = None
        if batch is not None:
            self.membership(gate=True, registration=REGISTRATION)
            gate_port = free_port()
            ctl = self.start_operator(f"membership-{mode}-{index}", batch, gate_port)
            self._wait(lambda: self._members() >= len(old_ips), "members recorded", 300)
            self.register_gate(ctl, gate_port)
        self._wait(lambda: self.deployment_done(sc.replicas), "every old pod available", 300)
        old_rs = [rs.metadata.name for rs in self.apps.list_namespaced_replica_set(NS).items]
        timeline = PodTimeline(self.api)
        timeline.ready.wait(30)
        replicasets = ReplicaSetWatch(self.apps)
        sampler = GroupSampler(self.emulator, gid)
        time.sleep(0.5)
        loadavg = os.getloadavg()[0]
        started = time.time()
        self.cluster.kubectl("rollout", "restart", "-n", NS, "deployment/web-0")
        complete = self._wait(
            lambda: self.deployment_done(sc.replicas), "the rollout complete", self.max_seconds, fail=False, every=0.1
        )
        finished = time.time()
        time.sleep(2.0)  # the tail: the group as the rollout left it
        sampler.stop()
        timeline.stop()
        replicasets.stop()
        records = {
            "additions": self.emulator.admin("GET", f"server-groups/{gid}/additions"),
            "history": self.emulator.admin("GET", f"server-groups/{gid}/history"),
            "requests": self.emulator.requests(),
            "jobs": self.emulator.admin("GET", "jobs"),
            "group": self.emulator.group(gid),
        }
        if self.dump_dir is not None:
            dump = {**records, "steps": replicasets.steps, "rs_statuses": replicasets.statuses}
            dump.update(pods=timeline.pods, began=timeline.began, started=started, finished=finished)
            dump.update(old_ips=sorted(old_ips), old_rs=old_rs, operator_log=ctl.name if ctl is not None else None)
            dump["samples"] = sampler.samples
            (self.dump_dir / f"membership-{mode}-{index}.json").write_text(json.dumps(dump, indent=1))
        log_text = ""
        released = None
        if ctl is not None:
            self.unregister_gate()
            released = self._release_memberships()
            ctl.stop()
            log_text = (self.log_dir / f"{ctl.name}.log").read_text(errors="replace")
        result = measure(
            mode, batch, sc.replicas, old_ips, old_rs, timeline, replicasets.steps, replicasets.statuses,
            sampler.samples, records, log_text, started, finished,
        )  # fmt: skip
        result.update(
            complete=complete,
            released_by_operator=released,
            loadavg=loadavg,
            operator_log=ctl.name if ctl is not None else None,
        )
        return result


def _pct(values: list[float]) -> dict[str, float | None]:
    return {"50": percentile(values, 50), "99": percentile(values, 99), "max": max(values, default=None)}


def available_steps(
    old_ips: set[str], additions: list[dict[str, Any]], history: list[dict[str, Any]], started: float
) -> list[tuple[float, int]]:
    """The number of the workload's servers listed Available, at each change, from the emulator's records: the old
    ones Available at the start; an addition counts from its job's end, a removal stops counting at its call (the
    server is listed Removing from then on). A failed removal job puts its server back at an unknown time: such a
    run is flagged (removal_jobs_failed), not counted here."""
    events: list[tuple[float, int]] = []
    for a in additions:
        if a["adding_at"] >= started and a["available_at"] is not None:
            events.append((a["available_at"], 1))
    for r in history:
        if r["removing_at"] >= started:
            events.append((r["removing_at"], -1))
    count = len(old_ips)
    out = [(started, count)]
    for t, d in sorted(events):
        count += d
        out.append((t, count))
    return out


def job_spans(additions: list[dict[str, Any]], removals: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Job id -> (start, end) of the group's jobs, from the emulator's records (an addition's available_at and a
    removal's out_of_rotation_at are their job's end, with draining off); a job not ended is left out."""
    spans: dict[str, tuple[float, float]] = {}
    for rows, start, end in ((additions, "adding_at", "available_at"), (removals, "removing_at", "out_of_rotation_at")):
        for r in rows:
            if r[end] is None:
                continue
            a, b = spans.get(r["job_id"], (r[start], r[end]))
            spans[r["job_id"]] = (min(a, r[start]), max(b, r[end]))
    return spans


def overlap(start: float, end: float, spans: list[tuple[float, float]]) -> float:
    """How long of [start, end] at least one of ``spans`` covers."""
    covered, reach = 0.0, start
    for a, b in sorted(spans):
        lo, hi = max(a, reach), min(b, end)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered


def measure(
    mode: str,
    batch: int | None,
    replicas: int,
    old_ips: set[str],
    old_rs: list[str],
    timeline: PodTimeline,
    steps: dict[str, list[tuple[float, int]]],
    statuses: dict[str, list[tuple[float, int, int, int, bool]]],
    samples: list[tuple[float, dict[str, str]]],
    records: dict[str, Any],
    log_text: str,
    started: float,
    finished: float,
) -> dict[str, Any]:
    additions = [a for a in records["additions"] if a["adding_at"] >= started]
    removals = [r for r in records["history"] if r["removing_at"] >= started]
    requests = records["requests"]
    full = batch is not None
    rollout_s = finished - started

    # -- the workload's Available servers ---------------------------------------------------------------------
    exact = available_steps(old_ips, additions, removals, started)
    during = [c for t, c in exact if t <= finished]
    in_window = [(t, s) for t, s in samples if started <= t <= finished]
    sampled = [sum(st == "Available" for st in s.values()) for _, s in in_window]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(in_window)]

    # -- old pods: terminating while in rotation ---------------------------------------------------------------
    out_at: dict[str, float] = {}
    for r in removals:
        if r["ServerId"] in old_ips and r["out_of_rotation_at"] is not None:
            out_at.setdefault(r["ServerId"], r["out_of_rotation_at"])
    began = {ip: t for ip, t in timeline.began.items() if ip in old_ips}
    exposed = sorted(ip for ip, t in began.items() if ip not in out_at or t < out_at[ip]) if full else []
    # An old pod's IP may be reused by a new pod (kwok hands freed IPs out again): a sample shows the old pod's
    # server only until that IP's first addition in the rollout.
    readded: dict[str, float] = {}
    for a in additions:
        readded[a["ServerId"]] = min(readded.get(a["ServerId"], math.inf), a["adding_at"])
    exposed_sampled: set[str] = set()
    for t, s in in_window:
        exposed_sampled |= {
            ip
            for ip, b in began.items()
            if b <= t < readded.get(ip, math.inf) and s.get(ip) in ("Available", "Removing")
        }

    # -- new pods: ContainersReady to Available ------------------------------------------------------------------
    added: dict[str, list[dict[str, Any]]] = {}
    for a in additions:
        added.setdefault(a["ServerId"], []).append(a)
    new_pods = {n: p for n, p in timeline.pods.items() if p["first_seen"] >= started and p.get("ip")}
    spans = job_spans(additions, removals)
    per_pod: list[dict[str, Any]] = []
    for name, p in sorted(new_pods.items()):
        addition = next((a for a in added.get(p["ip"], []) if a["available_at"] is not None), None)
        cr, cr_ltt, av = p.get("containers_ready_seen"), p.get("containers_ready_ltt"), None
        if addition is not None:
            av = addition["available_at"]
        per_pod.append(
            {
                "pod": name,
                "ip": p["ip"],
                "first_seen": round(p["first_seen"] - started, 3),
                "containers_ready_seen": None if cr is None else round(cr - started, 3),
                "containers_ready_ltt": None if cr_ltt is None else round(cr_ltt - started, 3),
                "ready_seen": None if p.get("ready_seen") is None else round(p["ready_seen"] - started, 3),
                "adding_at": None if addition is None else round(addition["adding_at"] - started, 3),
                "available_at": None if av is None else round(av - started, 3),
                "job_id": None if addition is None else addition["job_id"],
                "into_group_s": None if av is None or cr is None else round(av - cr, 3),
                "into_group_ltt_s": None if av is None or cr_ltt is None else round(av - cr_ltt, 3),
                "to_accepted_s": None if addition is None or cr is None else round(addition["adding_at"] - cr, 3),
                "add_job_s": None if addition is None else round(addition["available_at"] - addition["adding_at"], 3),
                # of to_accepted_s, how long another job of the group ran (one change per group at a time)
                "behind_jobs_s": None
                if addition is None or cr is None
                else round(
                    overlap(cr, addition["adding_at"], [v for k, v in spans.items() if k != addition["job_id"]]), 3
                ),
            }
        )
    into = [p["into_group_s"] for p in per_pod if p["into_group_s"] is not None]
    into_ltt = [p["into_group_ltt_s"] for p in per_pod if p["into_group_ltt_s"] is not None]
    to_accepted = [p["to_accepted_s"] for p in per_pod if p["to_accepted_s"] is not None]
    behind = [p["behind_jobs_s"] for p in per_pod if p["behind_jobs_s"] is not None]
    own = [p["to_accepted_s"] - p["behind_jobs_s"] for p in per_pod if p["behind_jobs_s"] is not None]
    busy = overlap(started, finished, list(spans.values()))
    ordered = sorted(v for v in spans.values() if v[1] > started and v[0] < finished)
    idle = [b[0] - a[1] for a, b in itertools.pairwise(ordered)]
    # The old ReplicaSet's status behind its spec (observedGeneration): while a held deletion blocks its sync
    stale: list[tuple[float, float]] = []
    for name in old_rs:
        seq = statuses.get(name, [])
        for (t, *_, observed), (t_next, *_) in itertools.pairwise([*seq, (finished, 0, 0, 0, True)]):
            if not observed and t_next > started:
                stale.append((max(t, started), min(t_next, finished)))
    holds = [float(m.group(3) or m.group(4)) for m in HOLD.finditer(log_text)]
    ready_gap = [
        p["ready_seen"] - p["containers_ready_seen"]
        for p in per_pod
        if p["ready_seen"] is not None and p["containers_ready_seen"] is not None
    ]

    # -- calls -----------------------------------------------------------------------------------------------------
    window = [r for r in requests if started <= r["time"] <= finished + 2.0]
    writes = ("AddServersToServerGroup", "RemoveServersFromServerGroup")
    jobs_of = {a: {r["job_id"] for r in window if r["action"] == a and r.get("code") == "OK"} for a in writes}
    ok_of = {a: sum(r["action"] == a and r.get("code") == "OK" for r in window) for a in writes}
    refused = Counter(
        f"{r['action']}:{r.get('code')}" for r in window if r["action"] in writes and r.get("code") != "OK"
    )
    before = [r for r in requests if r["time"] < started and r["action"] in writes]
    waves = scale_steps(steps, old_rs)
    new_rs = [n for n in steps if n not in old_rs]
    surges = scale_steps(steps, new_rs, down=False)
    bound = sum(2 * math.ceil(w / batch) for w in waves) if batch else None
    add_bound_surges = sum(math.ceil(w / batch) for w in surges) if batch else None
    sizes = {a: [len(r["servers"]) for r in window if r["action"] == a and r.get("code") == "OK"] for a in writes}

    # -- the operator's behaviour ----------------------------------------------------------------------------------
    ops: dict[str, list[tuple[float, str, str]]] = {}  # ServerId -> [(time, add|remove, job id)]
    first_call: dict[str, str] = {}
    for r in requests:
        if r["action"] in writes and r.get("code") == "OK":
            first_call.setdefault(r["job_id"], r["request_id"])
    seen_jobs: set[str] = set()
    for r in sorted(requests, key=lambda r: r["time"]):
        if r["action"] in writes and r.get("code") == "OK" and r["job_id"] not in seen_jobs:
            seen_jobs.add(r["job_id"])
            kind = "add" if r["action"] == "AddServersToServerGroup" else "remove"
            for ip in r["servers"]:
                ops.setdefault(ip, []).append((r["time"], kind, r["job_id"]))
    added_twice: list[dict[str, Any]] = []
    for ip, seq in ops.items():
        present = ip in old_ips
        for t, kind, job in seq:
            if kind == "add" and present:
                added_twice.append({"server": ip, "at": round(t - started, 3), "job": job, "request": first_call[job]})
            present = kind == "add"
    already = [
        {"request": r["request_id"], "at": round(r["time"] - started, 3), "servers": r.get("servers")}
        for r in requests
        if r["action"] == "AddServersToServerGroup" and r.get("code") == "ResourceAlreadyAssociated.BackendServer"
    ]
    already_before = [a for a in already if a["at"] < 0]
    already = [a for a in already if a["at"] >= 0]
    early = [
        {
            "pod": p["pod"],
            "ip": p["ip"],
            "ready_seen": p["ready_seen"],
            "available_at": p["available_at"],
            "add_request": first_call.get(p["job_id"] or ""),
        }
        for p in per_pod
        if full and p["ready_seen"] is not None and (p["available_at"] is None or p["ready_seen"] < p["available_at"])
    ]
    log_errors = [line for line in log_text.splitlines() if ERROR_LINE.search(line)]
    final = {s["ServerId"]: s["Status"] for s in records["group"]["Servers"]}
    new_ips = {p["ip"] for p in per_pod}
    failed_jobs = [j["Id"] for j in records["jobs"] if j["Status"] == "Failed"]

    return {
        "mode": mode,
        "batch_size": batch,
        "replicas": replicas,
        "rollout_s": round(rollout_s, 3),
        "fewest_available": min(during) if full else None,
        "fewest_available_sampled": min(sampled, default=None) if full else None,
        "samples": len(in_window),
        "samples_per_s": round(len(in_window) / rollout_s, 2) if rollout_s > 0 else None,
        "sample_gap_max_s": round(max(gaps), 3) if gaps else None,
        "old_pods": len(old_ips),
        "old_pods_seen_terminating": len(began),
        "exposed": len(exposed) if full else None,
        "exposed_pods": exposed,
        "exposed_sampled": len(exposed_sampled) if full else None,
        "old_ips_reused": len(old_ips & readded.keys()),
        "new_pods": len(per_pod),
        "new_pods_available": len(into),
        "into_group_s": _pct(into),
        "into_group_ltt_s": _pct(into_ltt),
        "to_accepted_s": _pct(to_accepted),
        "add_job_s": _pct([p["add_job_s"] for p in per_pod if p["add_job_s"] is not None]),
        "behind_jobs_s": _pct(behind),
        "to_accepted_own_s": _pct(own),
        "group_busy_s": round(busy, 3),
        "idle_between_jobs_s": _pct(idle),
        "old_rs_status_behind_s": round(overlap(started, finished, stale), 3),
        "gate_holds": len(holds),
        "gate_hold_s": _pct(holds),
        "job_spans": sorted((round(a - started, 3), round(b - started, 3)) for a, b in spans.values()),
        "busy_share": round(100 * busy / rollout_s, 1) if rollout_s > 0 else None,
        "jobs_in_rollout": sum(1 for a, b in spans.values() if a < finished and b > started),
        "containers_ready_to_ready_s": _pct(ready_gap),
        "add_calls_ok": ok_of["AddServersToServerGroup"],
        "add_jobs": len(jobs_of["AddServersToServerGroup"]),
        "remove_calls_ok": ok_of["RemoveServersFromServerGroup"],
        "remove_jobs": len(jobs_of["RemoveServersFromServerGroup"]),
        "refused": dict(refused),
        "writes_before_rollout": len(before),
        "servers_per_add": sizes["AddServersToServerGroup"],
        "servers_per_remove": sizes["RemoveServersFromServerGroup"],
        "waves": waves,
        "surges": surges,
        "bound_calls": bound,
        "add_bound_by_surges": add_bound_surges,
        "list_asyn_jobs_calls": sum(r["action"] == "ListAsynJobs" for r in window),
        "list_servers_calls": sum(r["action"] == "ListServerGroupServers" for r in window),
        "final_group_is_new_pods": (set(final) == new_ips and set(final.values()) <= {"Available"}) if full else None,
        "failed_jobs": failed_jobs,
        "already_associated_before_rollout": [{**a, "servers": len(a["servers"] or [])} for a in already_before],
        "checks": {
            "added_twice": added_twice,
            "already_associated": already,
            "ready_before_available": early,
            "log_errors": log_errors[:40],
            "log_error_count": len(log_errors),
        },
        "old_rs_steps": [(round(t - started, 3), n) for name in old_rs for t, n in steps.get(name, [])],
        "new_rs_steps": [(round(t - started, 3), n) for name in new_rs for t, n in steps.get(name, [])],
        "rs_statuses": {name: [(round(t - started, 3), *rest) for t, *rest in seq] for name, seq in statuses.items()},
        "series": {
            "available": [(round(t - started, 3), c) for t, c in exact] + [(round(rollout_s + 2.0, 3), exact[-1][1])],
            "sampled": [
                (round(t - started, 3), sum(st == "Available" for st in s.values()), len(s)) for t, s in samples
            ],
        },
        "pods": per_pod,
    }


# -- the table -------------------------------------------------------------------------------------------------


def med(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None


def worst(runs: list[dict[str, Any]], key: str, lowest: bool) -> Any:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    return min(values) if lowest else max(values)


def modes_of(runs: list[dict[str, Any]]) -> list[str]:
    order = sorted({r["mode"] for r in runs}, key=lambda m: (m != "no-lb", mode_batch(m) or 0))
    return order


def _int(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def table(data: dict[str, Any]) -> str:
    runs = data["runs"]
    base = med([r for r in runs if r["mode"] == "no-lb" and r["complete"]], "rollout_s")
    lines = [
        "# Full membership on the rollout",
        "",
        f"A Deployment (maxSurge 25%, maxUnavailable 0, terminationGracePeriodSeconds {GRACE_SECONDS}) rolled with "
        f"`kubectl rollout restart`; the operator with `registration: {json.dumps(REGISTRATION)}`, the readiness gate "
        f"in the pod template and the deletion gate (`maxWaitSeconds: {MAX_WAIT_SECONDS}`); emulator jobs of "
        f"{BEHAVIOUR['job_seconds']:.0f}-{JOB_SECONDS_MAX:.0f} s, flow control "
        f"{json.dumps(BEHAVIOUR['rate_limits'])} (calls, seconds). Medians over runs (worst run in brackets for "
        f"the safety figures). Machine: {data['machine']}.",
        "",
    ]
    for s in data["sets"]:
        lines.append(
            f"- `{s['command']}`: {s['replicas']} replicas, {s['runs']} run(s) per mode, {s['source']}; started "
            f"{s['started']}, took {s['seconds']:.0f} s"
        )
    lines += [
        "",
        "| mode | runs | rollout s (vs no-lb) | fewest Available, exact / sampled (worst) | samples/s (max gap s) | "
        "old pods exposed, records / sampled (worst) | ContainersReady to Available p50 / p99 s (watch) | same from "
        "lastTransitionTime "
        "p50 / p99 s | to the add accepted p50 / p99 s | adds + removals accepted (bound; waves) | refused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes_of(runs):
        chosen = [r for r in runs if r["mode"] == mode]
        rollout = med(chosen, "rollout_s")
        unfinished = sum(not r["complete"] for r in chosen)
        ratio = f" ({rollout / base:.1f}x)" if mode != "no-lb" and base and rollout else ""
        rollout_text = f"{fmt(rollout, 1)}{ratio}" + (f", {unfinished} unfinished" if unfinished else "")
        if mode == "no-lb":
            lines.append(f"| {mode} | {len(chosen)} | {rollout_text} | - | - | - | - | - | - | - | - |")
            continue
        calls = med(chosen, "add_jobs")
        removes = med(chosen, "remove_jobs")
        bound = med(chosen, "bound_calls")
        waves = "+".join(map(str, chosen[0]["waves"])) + (" in run 1" if len(chosen) > 1 else "")
        refused = sum(sum(r["refused"].values()) for r in chosen)
        lines.append(
            f"| {mode} | {len(chosen)} | {rollout_text} | {_int(med(chosen, 'fewest_available'))} / "
            f"{_int(med(chosen, 'fewest_available_sampled'))} ({worst(chosen, 'fewest_available', True)} / "
            f"{worst(chosen, 'fewest_available_sampled', True)}) | {fmt(med(chosen, 'samples_per_s'), 1)} "
            f"({fmt(worst(chosen, 'sample_gap_max_s', False))}) | {_int(med(chosen, 'exposed'))} / "
            f"{_int(med(chosen, 'exposed_sampled'))} ({worst(chosen, 'exposed', False)} / "
            f"{worst(chosen, 'exposed_sampled', False)}) | {fmt(med(chosen, 'into_group_s', '50'))} / "
            f"{fmt(med(chosen, 'into_group_s', '99'))} | {fmt(med(chosen, 'into_group_ltt_s', '50'))} / "
            f"{fmt(med(chosen, 'into_group_ltt_s', '99'))} | {fmt(med(chosen, 'to_accepted_s', '50'))} / "
            f"{fmt(med(chosen, 'to_accepted_s', '99'))} | {_int(calls)} + {_int(removes)} ({_int(bound)}; {waves}) "
            f"| {refused} in all runs |"
        )
    lines += ["", *goals(runs, base), "", *checks(runs), "", *per_run(runs)]
    return "\n".join(lines) + "\n"


def _judge(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def goals(runs: list[dict[str, Any]], base: float | None) -> list[str]:
    out = ["## Goals", ""]
    limit = JOB_SECONDS_MAX + SLACK_SECONDS
    base_behind = med([r for r in runs if r["mode"] == "no-lb"], "old_rs_status_behind_s")
    for mode in modes_of(runs):
        if mode == "no-lb":
            continue
        chosen = [r for r in runs if r["mode"] == mode]
        replicas = chosen[0]["replicas"]
        fewest = worst(chosen, "fewest_available", True)
        exposed = worst(chosen, "exposed", False)
        p50, p99 = med(chosen, "to_accepted_s", "50"), med(chosen, "to_accepted_s", "99")
        a50, a99 = med(chosen, "into_group_s", "50"), med(chosen, "into_group_s", "99")
        rollout = med(chosen, "rollout_s")
        ratio = rollout / base if rollout and base else None
        over = [r["add_jobs"] + r["remove_jobs"] - r["bound_calls"] for r in chosen if r["bound_calls"] is not None]
        out += [
            f"{mode}:",
            f"- fewest Available >= {replicas}: {_judge(fewest is not None and fewest >= replicas)} (worst run "
            f"{fewest} exact, {worst(chosen, 'fewest_available_sampled', True)} sampled)",
            f"- 0 old pods terminating while in rotation: {_judge(exposed == 0)} (worst run {exposed} by the "
            f"emulator's records, {worst(chosen, 'exposed_sampled', False)} by sampling)",
            f"- into the group within one job + {SLACK_SECONDS} s (the add accepted within {SLACK_SECONDS} s of "
            f"ContainersReady): p50 {_judge(p50 is not None and p50 <= SLACK_SECONDS)} ({fmt(p50)} s), p99 "
            f"{_judge(p99 is not None and p99 <= SLACK_SECONDS)} ({fmt(p99)} s); against the longest job + "
            f"{SLACK_SECONDS} s = {limit:.2f} s: p50 {_judge(a50 is not None and a50 <= limit)} ({fmt(a50)} s), p99 "
            f"{_judge(a99 is not None and a99 <= limit)} ({fmt(a99)} s). Of the time to the add accepted, another job "
            f"of the group ran (one change per group at a time) p50 {fmt(med(chosen, 'behind_jobs_s', '50'))} / "
            f"p99 {fmt(med(chosen, 'behind_jobs_s', '99'))} s; the rest, the operator's own, p50 "
            f"{fmt(med(chosen, 'to_accepted_own_s', '50'))} / p99 {fmt(med(chosen, 'to_accepted_own_s', '99'))} s",
            f"- rollout <= {RATIO_GOAL:.0f}x no-lb: {_judge(None if ratio is None else ratio <= RATIO_GOAL)} "
            f"({fmt(rollout, 1)} s against {fmt(base, 1)} s, {fmt(ratio, 1)}x; the group ran a job of its own "
            f"{fmt(med(chosen, 'busy_share'), 0)}% of the rollout, {_int(med(chosen, 'jobs_in_rollout'))} jobs "
            f"one after another, {fmt(med(chosen, 'add_job_s', '50'))} s an add job at p50, the group idle between two "
            f"jobs p50 {fmt(med(chosen, 'idle_between_jobs_s', '50'))} s; the old ReplicaSet's status behind its spec "
            f"{fmt(med(chosen, 'old_rs_status_behind_s'), 1)} s of it (no-lb: {fmt(base_behind, 1)} s), its sync "
            f"waiting on a deletion the gate held "
            f"(hold p50 {fmt(med(chosen, 'gate_hold_s', '50'))} / p99 {fmt(med(chosen, 'gate_hold_s', '99'))} s))",
            f"- adds + removals accepted within the bound: {_judge(all(o <= 0 for o in over) if over else None)} "
            f"(per run, calls over the bound: {', '.join(map(str, over))})",
            "",
        ]
    return out


def checks(runs: list[dict[str, Any]]) -> list[str]:
    out = ["## The operator's behaviour", ""]
    for i, r in enumerate(runs):
        if r["mode"] == "no-lb":
            continue
        c = r["checks"]
        found = []
        if c["added_twice"]:
            found.append(f"added twice: {json.dumps(c['added_twice'][:5])}")
        if c["already_associated"]:
            found.append(f"adds refused as already there: {json.dumps(c['already_associated'][:5])}")
        if c["ready_before_available"]:
            found.append(f"Ready before Available: {json.dumps(c['ready_before_available'][:5])}")
        if c["log_error_count"]:
            found.append(f"{c['log_error_count']} error lines in the log, first: {c['log_errors'][0][:300]!r}")
        if r["failed_jobs"]:
            found.append(f"failed jobs: {r['failed_jobs']}")
        if r.get("already_associated_before_rollout"):
            first = r["already_associated_before_rollout"][0]
            found.append(
                f"before the rollout, {len(r['already_associated_before_rollout'])} add call(s) refused "
                f"ResourceAlreadyAssociated.BackendServer (first {first['request']}, {first['servers']} servers, "
                f"{-first['at']:.1f} s before the restart): the members' servers were in the group already"
            )
        if r["final_group_is_new_pods"] is False:
            found.append("the group at the end is not exactly the new pods, Available")
        out.append(f"- run {i + 1} ({r['mode']}): " + ("; ".join(found) if found else "nothing wrong seen"))
    return out


def per_run(runs: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Every run",
        "",
        "| run | mode | load avg | rollout s | fewest exact / sampled | exposed | new pods Available | "
        "into group p50 / p99 / max s | to add accepted p50 / p99 s (behind other jobs p50 / p99) | add job p50 s | "
        "group busy % | old RS status behind s | adds (servers) | "
        "removals (servers) | waves | bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        if r["mode"] == "no-lb":
            out.append(
                f"| {i + 1} | no-lb | {r['loadavg']:.1f} | {r['rollout_s']:.1f} | - | - | - | - | - | - | - | "
                f"{fmt(r.get('old_rs_status_behind_s'), 1)} | - | - | "
                f"{'+'.join(map(str, r['waves']))} | - |"
            )
            continue
        g, a = r["into_group_s"], r["to_accepted_s"]
        out.append(
            f"| {i + 1} | {r['mode']} | {r['loadavg']:.1f} | {r['rollout_s']:.1f} | {r['fewest_available']} / "
            f"{r['fewest_available_sampled']} | {r['exposed']} | {r['new_pods_available']} of {r['new_pods']} | "
            f"{fmt(g['50'])} / {fmt(g['99'])} / {fmt(g['max'])} | {fmt(a['50'])} / {fmt(a['99'])} "
            f"({fmt(r['behind_jobs_s']['50'])} / {fmt(r['behind_jobs_s']['99'])}) | {fmt(r['add_job_s']['50'])} | "
            f"{fmt(r['busy_share'], 0)} | {fmt(r.get('old_rs_status_behind_s'), 1)} | {r['add_jobs']} "
            f"({'+'.join(map(str, r['servers_per_add']))}) | "
            f"{r['remove_jobs']} ({'+'.join(map(str, r['servers_per_remove']))}) | "
            f"{'+'.join(map(str, r['waves']))} | {r['bound_calls']} |"
        )
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    full = [m for m in modes_of(runs) if m != "no-lb"]
    base = med([r for r in runs if r["mode"] == "no-lb" and r["complete"]], "rollout_s")
    fig, axes = plt.subplots(1, len(full), figsize=(6 * len(full), 4), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], full, strict=True):
        chosen = [r for r in runs if r["mode"] == mode]
        for i, r in enumerate(chosen):
            ts, cs = zip(*r["series"]["available"], strict=True)
            line = ax.step(ts, cs, where="post", label=f"run {i + 1}")[0]
            ax.axvline(r["rollout_s"], color=line.get_color(), linestyle="--", linewidth=0.8)
        replicas = chosen[0]["replicas"]
        ax.axhline(replicas, color="black", linewidth=0.8, linestyle=":", label=f"replicas ({replicas})")
        if base:
            ax.axvline(base, color="grey", linewidth=1.5, alpha=0.5, label=f"no-lb rollout ({base:.1f} s)")
        ax.set_title(f"{mode}: the workload's Available servers")
        ax.set_xlabel("seconds since `kubectl rollout restart` (dashed: rollout complete)")
        ax.set_ylabel("servers listed Available")
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(data: dict[str, Any], out: Path) -> str:
    (out / "membership.json").write_text(json.dumps(data, indent=1))
    text = table(data)
    (out / "membership.md").write_text(text)
    if any(r["mode"] != "no-lb" for r in data["runs"]):
        plot(data, out / "membership.png")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="200 replicas times this (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode, in rounds of every mode (default 3)")
    parser.add_argument("--batch-sizes", default="40,200", help="the full modes' --batch-size (default 40,200)")
    parser.add_argument("--modes", help="comma-separated: no-lb, full-b<N> (default: no-lb and --batch-sizes)")
    parser.add_argument("--source", metavar="REV", help="run the operator of this git revision (default: work tree)")
    parser.add_argument("--max-seconds", type=float, default=300, help="a rollout not complete by then: unfinished")
    parser.add_argument("--log-dir", type=Path, help="keep the operator's logs here (default: a temporary folder)")
    parser.add_argument("--dump", type=Path, help="write each run's emulator records, steps, pods and samples here")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where membership.{json,md,png} go")
    parser.add_argument("--table-only", action="store_true", help="rebuild membership.md and .png from the JSON")
    args = parser.parse_args()
    out: Path = args.results
    out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        print(write(json.loads((out / "membership.json").read_text()), out))
        return 0
    modes = args.modes.split(",") if args.modes else ["no-lb", *(f"full-b{b}" for b in args.batch_sizes.split(","))]
    bad = [m for m in modes if m != "no-lb" and not re.fullmatch(r"full-b\d+", m)]
    if bad:
        parser.error(f"unknown mode(s): {', '.join(bad)}")
    sc = harness.scenarios(args.scale)["rollout"]
    began = time.time()
    this_set: dict[str, Any] = {
        "command": "python bench/membership.py " + " ".join(sys.argv[1:]),
        "scale": args.scale,
        "replicas": sc.replicas,
        "runs": args.runs,
        "modes": modes,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(began)),
        "seconds": 0.0,
    }
    data: dict[str, Any] = {"machine": machine(), "sets": [this_set], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = args.log_dir or Path(tmp) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        src, source = source_tree(args.source, Path(tmp))
        this_set["source"] = source
        print(f"[membership] operator: {source}", flush=True)
        bench = MembershipBench(Path(tmp), log_dir, args.max_seconds, src)
        bench.dump_dir = args.dump
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(args.runs):
                for mode in modes:
                    print(f"[membership] {mode} run {index + 1}/{args.runs} ...", flush=True)
                    res = bench.run_mode(sc, mode, index)
                    res["run"] = index
                    data["runs"].append(res)
                    this_set["seconds"] = time.time() - began
                    keys = ("rollout_s", "fewest_available", "fewest_available_sampled", "samples_per_s", "exposed",
                            "into_group_s", "to_accepted_s", "add_jobs", "remove_jobs", "bound_calls", "waves",
                            "refused", "complete")  # fmt: skip
                    print(f"[membership] {mode}: {json.dumps({k: res[k] for k in keys})}", flush=True)
                    c = res.get("checks") or {}
                    flagged = {k: v for k, v in c.items() if v and k != "log_errors"}
                    if flagged:
                        print(f"[membership] {mode}: OPERATOR CHECKS FLAGGED {json.dumps(flagged)[:2000]}", flush=True)
                    write(data, out)
        finally:
            bench.unregister_gate()
            bench.close()
    this_set["seconds"] = time.time() - began
    print(write(data, out))
    print(f"[membership] done in {this_set['seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
