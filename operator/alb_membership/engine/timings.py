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
    """A pod is exposed from its deletion's start until its server is out (here: the job's end). A removal the gate
    held until the server was out was observed at 0 when the gate answered; one it let through (timed out, too
    many) counts from the let-through; any other removal of a gated resource's pod (a deletion that passed no gate:
    no leader answered, the webhook was down) from the deletion's start, under gate="true" all the same."""
    when = now()
    for entry in batch:
        removal = entry.removal
        if removal is None:
            continue
        if removal.trigger == "deletion-gate":
            if removal.exposed_since is not None:
                metrics.exposure_seconds.labels("true").observe(_seconds(when - removal.exposed_since))
        elif removal.deletion_started is not None:
            label = "true" if removal.gated else "false"
            metrics.exposure_seconds.labels(label).observe(_seconds(when - removal.deletion_started))


def _seconds(delta: dt.timedelta) -> float:
    return max(0.0, delta.total_seconds())
