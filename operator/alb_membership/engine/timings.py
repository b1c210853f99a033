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
    """A pod is exposed from its deletion's start until its server is out (here: the job's end). Of the removals
    the deletion gate decided: one it held until the server was out (``held_out``), or is holding still (the job
    ended first: the deletion has not happened yet), was observed at 0 when the gate answered, or will be; one it
    let through (timed out, too many, error) counts from the let-through; any other (no leader answered, a
    takeover, the webhook's timeout: the deletion went ahead without this process's word) from the deletion's start
    as the watches saw it, or from the decision when they never did. Any other removal of a gated resource's pod (a
    deletion that passed no gate) from the deletion's start, under gate="true" all the same."""
    when = now()
    for entry in batch:
        removal = entry.removal
        if removal is None:
            continue
        if removal.trigger == "deletion-gate":
            if removal.exposed_since is not None:
                since = removal.exposed_since
            elif removal.held_out or removal.holds > 0:
                continue
            else:
                since = removal.deletion_started or removal.decided_at
            metrics.exposure_seconds.labels("true").observe(_seconds(when - since))
        elif removal.deletion_started is not None:
            label = "true" if removal.gated else "false"
            metrics.exposure_seconds.labels(label).observe(_seconds(when - removal.deletion_started))


def _seconds(delta: dt.timedelta) -> float:
    return max(0.0, delta.total_seconds())
