"""Why a removal went out later than it could have, from the per-pod timelines of bench/run.py's results.

For each operator run of the rollout, scaledown and faults scenarios it counts the pods that were already
terminating (as the harness saw it) at least 0.3 s before a call of their group went out, a call with room left
(fewer servers than the batch size), yet went in a later call, and how much longer they waited. It also shows the
operator's own latency (albm_removal_accepted_seconds{since="observed"}, the bucket of its p99) and, for the
scale-downs, how far one group's deletion starts spread (the coalescing window is 0.2 s).

    .venv/bin/python bench/diagnose.py bench/results/diagnostics
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

SLACK = 0.3  # the coalescing window (0.2 s) and the harness's own observation, with room to spare


def diagnose(run: dict[str, Any], batch: int) -> str:
    calls, pods = run["series"]["calls"], run["series"]["pods"]
    missed = []
    for began, _, _, index in pods.values():
        if began is None or index is None:
            continue
        own = calls[index]
        earlier = [
            c for c in calls[:index] if c["group"] == own["group"] and c["at"] > began + SLACK and c["servers"] < batch
        ]
        if earlier:
            missed.append(own["at"] - earlier[0]["at"])
    sizes = [c["servers"] for c in calls]
    text = (
        f"  accepted p99 {run['accepted_s']['99']:.2f} s; {len(calls)} calls"
        + (f" {sizes}" if len(calls) < 10 else "")
        + f"; pods that missed a call with room left although terminating >= {SLACK} s before it: {len(missed)}"
        + (f" (waited {statistics.median(missed):.2f} s longer, median)" if missed else "")
        + f"; the operator's own p99 (observed -> accepted) <= {run.get('operator_accepted_p99_bucket')} s"
    )
    if run["scenario"] in ("scaledown", "faults"):
        starts: dict[str, list[float]] = defaultdict(list)
        per_group: dict[str, int] = defaultdict(int)
        for began, _, _, index in pods.values():
            if began is not None and index is not None:
                starts[calls[index]["group"]].append(began)
        for c in calls:
            per_group[c["group"]] += 1
        spreads = sorted(max(v) - min(v) for v in starts.values())
        text += (
            f"\n    a group's deletion starts spread over {statistics.median(spreads):.2f} s (median), "
            f"{spreads[-1]:.2f} s (max); groups with more than one call: {sum(v > 1 for v in per_group.values())}"
        )
    return text


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/diagnostics")
    for name in ("rollout-operator-b40", "rollout-operator-b200", "scaledown-operator-b40", "faults-operator-b40"):
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        print(name)
        for run in json.loads(path.read_text())["runs"]:
            if "calls" in run["series"]:
                print(diagnose(run, run["batch_size"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
