"""How long removals took, for Prometheus: from a pod's deletion (or from when the operator saw the change) to its
removal's job being accepted or succeeding, and how long a pod was exposed (still in rotation while terminating)."""

from __future__ import annotations

import datetime as dt

from prometheus_client import Histogram

from alb_membership.metrics import Metrics
from alb_membership.model.ledger import Entry, now


def observe_latency(histogram: Histogram, batch: list[Entry]) -> None:
    when = now()
    for entry in batch:
        removal = entry.removal
        if removal is None:
            continue
        histogram.labels("observed").observe(_seconds(when - removal.decided_at))
        if removal.deletion_started is not None:
            histogram.labels("deletion").observe(_seconds(when - removal.deletion_started))


def observe_exposure(metrics: Metrics, batch: list[Entry]) -> None:
    """Without the gate, a pod is exposed from its deletion's start until its server is out (the job's end)."""
    when = now()
    for entry in batch:
        removal = entry.removal
        if removal is not None and removal.deletion_started is not None and removal.trigger != "deletion-gate":
            metrics.exposure_seconds.labels("false").observe(_seconds(when - removal.deletion_started))


def _seconds(delta: dt.timedelta) -> float:
    return max(0.0, delta.total_seconds())
