"""Tables, goals and plots from the JSON results of bench/run.py (bench/results/<scenario>-<variant>.json).

Every figure of a (scenario, variant) is the median over its runs; the number of runs is shown beside it.
The goals are those of issue 11; each is shown with the measured figure and whether it was met.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIO_ORDER = ["rollout", "scaledown", "faults", "watch", "takeover"]
JOB_SECONDS_MAX = 2.0  # the emulator's jobs take 1-2 s (job_seconds 1.0 + up to 1.0 jitter)
LEASE_SECONDS = 15
GOAL_RSS_MIB = 200
GOAL_SLACK_S = 0.25


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def load() -> list[dict[str, Any]]:
    files = [
        json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json")) if f.name.split("-")[0] in SCENARIO_ORDER
    ]
    files = [f for f in files if isinstance(f, dict) and "runs" in f and "variant" in f]

    def order(f: dict[str, Any]) -> tuple[int, int, int]:
        v = f["variant"]
        batch = int(v.split("-b")[1]) if v.startswith("operator-b") else 10_000
        scenario = SCENARIO_ORDER.index(f["scenario"]) if f["scenario"] in SCENARIO_ORDER else 99
        return (scenario, v == "naive", batch)

    return sorted(files, key=order)


def label(variant: str) -> str:
    return f"operator, batch {variant.split('-b')[1]}" if variant.startswith("operator-b") else "naive"


def m(runs: list[dict[str, Any]], *path: Any) -> float | None:
    """Median over runs of the value at ``path``."""
    values = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
            if v is None:
                break
        values.append(v)
    return median(values)


def done(runs: list[dict[str, Any]]) -> str:
    if all(r["complete"] for r in runs):
        return fmt(m(runs, "seconds_to_all_removed"), 1)
    r = runs[0]
    return f"unfinished after {r['seconds_to_all_removed']:.0f} ({r['measured']}/{r['pods_leaving']} accepted)"


def scenario_table(files: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | controller | runs | pods leaving / watched | accepted p50 / p95 / p99 s "
        "| succeeded p50 / p95 / p99 s "
        "| remove calls accepted (attempts) | bound at 40 / at batch | ListAsynJobs | jobs | start to ready s "
        "| peak RSS MiB | CPU s | CPU s per 1,000 pod events | all removed s |"
    )
    lines = [head, "|" + "---|" * 15]
    for f in files:
        if f["scenario"] == "takeover":
            continue
        runs = f["runs"]
        r0 = runs[0]
        acc = " / ".join(fmt(m(runs, "accepted_s", p)) for p in ("50", "95", "99"))
        suc = " / ".join(fmt(m(runs, "succeeded_s", p)) for p in ("50", "95", "99"))
        calls = f"{fmt(m(runs, 'remove_calls_ok'), 0)} ({fmt(m(runs, 'remove_calls'), 0)})"
        bound = f"{r0['bound_at_40']} / {r0['lower_bound_calls']}"
        # the operator holds every pod of its namespaces; the baseline's label selector matches the members only
        watched = r0.get("watched_pods_metric") or (
            r0["pods_leaving"] if f["variant"] == "naive" else r0["watched_pods"]
        )
        lines.append(
            f"| {f['scenario']} | {label(f['variant'])} | {len(runs)} | {r0['pods_leaving']} / {watched:,.0f} "
            f"| {acc} | {suc} | {calls} | {bound} | {fmt(m(runs, 'list_asyn_jobs_calls'), 0)} "
            f"| {fmt(m(runs, 'jobs'), 0)} | {fmt(m(runs, 'startup_ready_s'), 1)} "
            f"| {fmt(m(runs, 'controller_peak_rss_mib'), 1)} | {fmt(m(runs, 'controller_cpu_seconds'), 1)} "
            f"| {fmt(m(runs, 'cpu_s_per_1000_events'), 2)} | {done(runs)} |"
        )
    return "\n".join(lines)


def ratios(files: list[dict[str, Any]]) -> str:
    by = {(f["scenario"], f["variant"]): f["runs"] for f in files}
    out = []

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if not a or not b else f"{a / b:.3f}x"

    for (name, variant), op in by.items():
        base = by.get((name, "naive"))
        if variant == "naive" or base is None:
            continue
        out.append(
            f"- {name}, {label(variant)} / naive: accepted p50 "
            f"{ratio(m(op, 'accepted_s', '50'), m(base, 'accepted_s', '50'))}, "
            f"p99 {ratio(m(op, 'accepted_s', '99'), m(base, 'accepted_s', '99'))}; succeeded p50 "
            f"{ratio(m(op, 'succeeded_s', '50'), m(base, 'succeeded_s', '50'))}; remove calls "
            f"{ratio(m(op, 'remove_calls'), m(base, 'remove_calls'))}; CPU s "
            f"{ratio(m(op, 'controller_cpu_seconds'), m(base, 'controller_cpu_seconds'))}; peak RSS "
            f"{ratio(m(op, 'controller_peak_rss_mib'), m(base, 'controller_peak_rss_mib'))}; all removed "
            f"{ratio(m(op, 'seconds_to_all_removed'), m(base, 'seconds_to_all_removed'))}"
            + (
                ""
                if all(r["complete"] for r in base)
                else " (the baseline unfinished: its figures cover the pods it got to)"
            )
        )
    return "\n".join(out)


def takeover_table(files: list[dict[str, Any]]) -> str:
    events = [e for f in files if f["scenario"] == "takeover" for r in f["runs"] for e in r["events"]]
    if not events:
        return ""
    head = (
        "| # | signal to the leader | leader gone s | standby leading s | first removal accepted s "
        "| first removal after leading s | all removed s | standby start to ready s | watched pods |"
    )
    lines = [head, "|" + "---|" * 9]
    for i, e in enumerate(events, 1):
        lines.append(
            f"| {i} | {e['signal']} | {fmt(e['leader_exited_s'])} | {fmt(e['standby_leading_s'])} "
            f"| {fmt(e['first_removal_s'])} | {fmt(e['first_removal_after_leading_s'])} | {fmt(e['all_removed_s'])} "
            f"| {fmt(e['standby_ready_s'], 1)} | {e['watched_pods']:,.0f} |"
        )
    return (
        "All times from the signal, except 'after leading'. 'leader gone': the process exited; 'standby leading': "
        "its /readyz said leader (polled every 50 ms); 'first removal accepted': the emulator's arrival time of the "
        "first RemoveServersFromServerGroup answered OK; the member Deployment was scaled to 0 right after the "
        "signal.\n\n" + "\n".join(lines)
    )


def _over(values: list[float | None], target: float) -> str:
    """Runs over the target, when the median is judged but not every run met it."""
    over = sum(1 for v in values if v is not None and v > target)
    return f"; {over} of {len(values)} over" if over else ""


def _judge(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def goals(files: list[dict[str, Any]]) -> str:
    by = {(f["scenario"], f["variant"]): f["runs"] for f in files}
    rows: list[tuple[str, str, str, str, bool | None]] = []  # goal, target, measured, runs, ok

    watch_op = next((v for (s, var), v in by.items() if s == "watch" and var != "naive"), None)
    watch_naive = by.get(("watch", "naive"))
    if watch_op:
        rss = [r["controller_peak_rss_mib"] for r in watch_op]
        med = median(rss)
        rows.append(
            (
                f"operator peak RSS at {watch_op[0].get('watched_pods_metric') or watch_op[0]['watched_pods']:,.0f} "
                "watched pods",
                f"<= {GOAL_RSS_MIB} MiB",
                f"{fmt(med, 1)} MiB (runs: {', '.join(fmt(x, 1) for x in rss)})" + _over(rss, GOAL_RSS_MIB),
                str(len(rss)),
                None if med is None else med <= GOAL_RSS_MIB,
            )
        )
        if watch_naive:
            watched = watch_op[0].get("watched_pods_metric") or watch_op[0]["watched_pods"]
            cpu_op, cpu_base = m(watch_op, "controller_cpu_seconds"), m(watch_naive, "controller_cpu_seconds")
            rows.append(
                (
                    f"operator CPU at {watched:,.0f} watched pods (whole run, listing included)",
                    "<= 2x the baseline's",
                    f"{fmt(cpu_op, 1)} s vs baseline {fmt(cpu_base, 1)} s = "
                    f"{fmt(cpu_op / cpu_base if cpu_op and cpu_base else None)}x"
                    f" (baseline ran {fmt(m(watch_naive, 'seconds_to_all_removed'), 0)} s"
                    + ("" if all(r["complete"] for r in watch_naive) else ", unfinished")
                    + ")",
                    f"{len(watch_op)} / {len(watch_naive)}",
                    None if not cpu_op or not cpu_base else cpu_op <= 2 * cpu_base,
                )
            )
    for (s, var), runs in by.items():
        if var == "naive" or s == "takeover":
            continue
        ok_calls = [r["remove_calls_ok"] for r in runs]
        attempts = [r["remove_calls"] for r in runs]
        bound = runs[0]["bound_at_40"]
        rows.append(
            (
                f"remove calls, {s}, {label(var)}",
                f"<= ceil(n/40) per group = {bound}",
                f"{fmt(median(ok_calls), 0)} accepted (runs: {', '.join(str(c) for c in ok_calls)}; "
                f"{fmt(median(attempts), 0)} attempts"
                + (", the rest refused by injected faults and retried" if median(attempts) != median(ok_calls) else "")
                + f"; ceil(n/batch) = {runs[0]['lower_bound_calls']})",
                str(len(runs)),
                (median(ok_calls) or 0) <= bound,
            )
        )
    for (s, var), runs in by.items():
        if s != "rollout" or var == "naive":
            continue
        batch = int(var.split("-b")[1])
        p99s = [r["accepted_s"]["99"] for r in runs]
        p99 = median(p99s)
        # A wave is one scale-down step of the old ReplicaSet: at most maxSurge + maxUnavailable (25% each, the
        # Deployment's defaults: rounded up and down) of the replicas. The bursts the harness saw are shown too.
        n = runs[0]["pods_leaving"]
        wave = math.ceil(0.25 * n) + math.floor(0.25 * n)
        bursts = max(max(r["wave_sizes"] or [0]) for r in runs)
        jobs_needed = math.ceil(wave / batch)
        target = jobs_needed * JOB_SECONDS_MAX + GOAL_SLACK_S
        rows.append(
            (
                f"accepted p99, 200-pod rollout, batch {batch}",
                f"<= ceil(wave/{batch}) x job + 0.25 s = {jobs_needed} x {JOB_SECONDS_MAX:.0f} + 0.25 = {target:.2f} s "
                f"(wave: {wave} pods, the largest scale-down step; bursts seen up to {bursts})",
                f"{fmt(p99)} s (runs: {', '.join(fmt(x) for x in p99s)})" + _over(p99s, target),
                str(len(runs)),
                None if p99 is None else p99 <= target,
            )
        )
    events = [e for runs in (v for (s, _), v in by.items() if s == "takeover") for r in runs for e in r["events"]]
    for sig, target in (("SIGKILL", LEASE_SECONDS + 1.0), ("SIGTERM", 2.0)):
        chosen = [e["first_removal_s"] for e in events if e["signal"] == sig]
        if not chosen:
            continue
        med = median(chosen)
        rows.append(
            (
                f"takeover to first removal after {sig} of the leader, at "
                f"{median([e['watched_pods'] for e in events]):,.0f} pods",
                f"<= {target:.0f} s" + (" (Lease 15 s + 1 s)" if sig == "SIGKILL" else ""),
                f"{fmt(med)} s (events: {', '.join(fmt(c) for c in chosen)})" + _over(chosen, target),
                str(len(chosen)),
                None if med is None else med <= target,
            )
        )
    info: list[str] = []
    if watch_op:
        info.append(
            "- start to ready (all watches listed, kopf ready) at "
            f"{watch_op[0].get('watched_pods_metric', 0):,.0f} pods: "
            f"{fmt(m(watch_op, 'startup_ready_s'), 1)} s median (runs: "
            f"{', '.join(fmt(r['startup_ready_s'], 1) for r in watch_op)})"
            + (
                f"; as a standby in the takeover runs: {fmt(median([e['standby_ready_s'] for e in events]), 1)} s "
                f"({len(events)} replicas)"
                if events
                else ""
            )
        )
        info.append(
            f"- CPU seconds per 1,000 pod events at {watch_op[0].get('watched_pods_metric', 0):,.0f} pods: "
            f"{fmt(m(watch_op, 'cpu_s_per_1000_events'))} (CPU {fmt(m(watch_op, 'controller_cpu_seconds'), 1)} s over "
            f"{fmt(m(watch_op, 'watch_events'), 0)} events, the whole run); of it, start to ready: "
            f"{fmt(m(watch_op, 'cpu_at_ready_s'), 1)} s"
        )
    if events:
        rss = [e["standby_peak_rss_mib"] for e in events if e.get("standby_peak_rss_mib")]
        info.append(
            f"- takeover replicas' peak RSS: {fmt(median(rss), 1)} MiB median, {fmt(max(rss, default=None), 1)} max"
        )
    lines = [
        "Each goal is judged on the median of its runs; runs over the target are counted beside it.",
        "",
        "| goal | target | measured (median) | runs | |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {g} | {t} | {meas} | {n} | {_judge(ok)} |" for g, t, meas, n, ok in rows]
    return "\n".join(lines) + ("\n\n" + "\n".join(info) if info else "")


def machine(files: list[dict[str, Any]]) -> str:
    for f in files:
        for r in f["runs"]:
            if r.get("machine"):
                return r["machine"]
    return "unknown"


def render(files: list[dict[str, Any]]) -> str:
    scales = sorted({r.get("scale") for f in files for r in f["runs"]})
    loads = [r["loadavg"] for f in files for r in f["runs"] if r.get("loadavg")]
    sources = sorted({r.get("source", "?") for f in files for r in f["runs"]})
    parts = [
        f"Operator: {'; '.join(sources)}.\n\n"
        f"Machine: {machine(files)}. Scale {', '.join(str(s) for s in scales)}. "
        "Every figure is the median over the runs counted beside it; the baseline ran once per scenario, in the same "
        "invocation, beside the operator. Load average (1 min) at the runs' starts: "
        f"{fmt(min(loads), 1) if loads else '-'} to {fmt(max(loads), 1) if loads else '-'} on 2 cores.",
        "## Goals (issue 11)",
        goals(files),
        "## Scenarios",
        scenario_table(files),
        ratios(files),
    ]
    take = takeover_table(files)
    if take:
        parts += ["## Takeover at the watch scale", take]
    return "\n\n".join(parts) + "\n"


def plot(name: str, files: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = RESULTS / f"{name}.png"
    if name == "takeover":
        events = [e for f in files for r in f["runs"] for e in r["events"]]
        fig, ax = plt.subplots(figsize=(10, 0.6 * len(events) + 1.5))
        for i, e in enumerate(events):
            y = len(events) - i
            lead, first, done_ = e["standby_leading_s"] or 0, e["first_removal_s"] or 0, e["all_removed_s"] or 0
            ax.barh(y, lead, color="#bbbbbb", label="until the standby leads" if i == 0 else None)
            ax.barh(y, first - lead, left=lead, color="#e07b39", label="leading to first removal" if i == 0 else None)
            ax.barh(
                y, done_ - first, left=first, color="#3c8dbc", label="first removal to all removed" if i == 0 else None
            )
            ax.text(done_ + 0.1, y, f"{e['signal']}: first removal {first:.2f} s", va="center", fontsize=8)
        ax.axvline(LEASE_SECONDS + 1, color="red", ls=":", lw=1, label="SIGKILL goal (16 s)")
        ax.axvline(2, color="darkred", ls="--", lw=1, label="SIGTERM goal (2 s)")
        ax.set(xlabel="seconds since the signal to the leader", yticks=[], title="takeover at the watch scale")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path
    fig, (cdf, calls) = plt.subplots(1, 2, figsize=(12, 4.5))
    for f in files:
        runs, who = f["runs"], label(f["variant"])
        for key, style in (("to_accept", "-"), ("to_success", "--")):
            values = sorted(v for r in runs for v in r["series"][key])
            if values:
                cdf.plot(
                    values,
                    [(i + 1) / len(values) for i in range(len(values))],
                    style,
                    label=f"{who}: {key.replace('to_', 'to ')}",
                )
        for key, marker in (("remove_times", "RemoveServers"), ("poll_times", "ListAsynJobs")):
            times = runs[0]["series"][key]
            if times:
                bins = range(0, int(max(times)) + 2)
                counts = [sum(1 for t in times if b <= t < b + 1) for b in bins]
                calls.step(list(bins), counts, where="post", label=f"{who}: {marker}")
    cdf.set(
        xlabel="seconds since the pod's deletion began (all runs)",
        ylabel="share of pods",
        title=f"{name}: removal latency",
    )
    cdf.set_xscale("log")
    cdf.legend(fontsize=8)
    calls.set(
        xlabel="seconds since the trigger (first run)", ylabel="calls per second", title=f"{name}: API calls over time"
    )
    calls.set_yscale("symlog")
    calls.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(files: list[dict[str, Any]] | None = None) -> str:
    files = load() if files is None else files
    for name in dict.fromkeys(f["scenario"] for f in files):
        plot(name, [f for f in files if f["scenario"] == name])
    text = render(files)
    (RESULTS / "table.md").write_text(text)
    return text
