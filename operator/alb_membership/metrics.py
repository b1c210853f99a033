"""Prometheus metrics (PRODUCT.md section 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

GATE_OUTCOMES = (
    "confirmed",
    "kept",
    "timed-out",
    "not-a-member",
    "unknown-pod",
    "pdb-blocked",
    "dry-run",
    "too-many",
    "no-leader",
    "no-servers",
    "error",
)
# Deletions let through before their servers were out of rotation (the alert and the dashboard count these).
UNCONFIRMED = ("timed-out", "no-leader", "too-many", "no-servers", "error")
WEBHOOK_REFUSALS = ("tls", "path", "body")
ADDITION_OUTCOMES = ("submitted", "succeeded", "already-there", "failed", "refused")
UNDO_REASONS = ("owner-live-again", "owner-live-after-removal")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.api_calls = Counter(
            "albm_api_calls", "ALB API call attempts by action and outcome code", ["action", "code"], registry=r
        )
        self.api_seconds = Histogram("albm_api_call_seconds", "ALB API call duration", ["action"], registry=r)
        self.batch_servers = Histogram(
            "albm_batch_servers",
            "Servers per RemoveServersFromServerGroup call",
            buckets=(1, 2, 5, 10, 20, 30, 40, 80, 120, 160, 200),
            registry=r,
        )
        self.queue_depth = Gauge(
            "albm_queue_depth", "Removals decided and not yet sent, by server group", ["server_group"], registry=r
        )
        self.jobs = Counter("albm_jobs", "ALB jobs (removals and additions) by final status", ["status"], registry=r)
        # Two clocks: since the pod's deletion began (deletionTimestamp minus grace period; the API server keeps
        # whole seconds) and since the operator observed the change (sub-second, the operator's own latency).
        self.accepted_seconds = Histogram(
            "albm_removal_accepted_seconds",
            "Seconds from a removal trigger to the cloud accepting the job",
            ["since"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.succeeded_seconds = Histogram(
            "albm_removal_succeeded_seconds",
            "Seconds from a removal trigger to the job succeeding",
            ["since"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.called_off = Counter(
            "albm_removals_called_off",
            "Removals called off before their call because a live pod or endpoint held the server",
            registry=r,
        )
        self.released = Counter(
            "albm_members_released", "Members no longer tracked after a spec edit, without removal", registry=r
        )
        self.leaks_repaired = Counter(
            "albm_leaks_repaired",
            "Owned servers found with every owner gone (while no operator ran, or missed events) and removed",
            registry=r,
        )
        self.forgotten = Counter(
            "albm_removals_forgotten",
            "Pending removals dropped because anti-entropy found the server already out of the group",
            registry=r,
        )
        self.internal_errors = Counter(
            "albm_internal_errors",
            "Unexpected exceptions caught by a supervised task, which then retried",
            ["component"],
            registry=r,
        )
        self.ledger_identities = Gauge(
            "albm_ledger_identities", "Server identities held in the group ledgers", registry=r
        )
        self.watched_pods = Gauge(
            "albm_watched_pods", "Pods held by the operator's watches (namespaces with a resource only)", registry=r
        )
        self.watch_events = Gauge(
            "albm_watch_events",
            "Objects received by the operator's watches and lists since start (pods, EndpointSlices, resources; "
            "all namespaces, kept or not)",
            registry=r,
        )
        self.gate_outcomes = Counter(
            "albm_gate_outcomes",
            "Deletion gate answers: confirmed (out of rotation), kept, not-a-member, unknown-pod (no such pod with "
            "that UID in the watches), pdb-blocked, dry-run; let through unconfirmed: timed-out, too-many, "
            "no-leader, no-servers (no server of the pod to wait for), error",
            ["outcome"],
            registry=r,
        )
        self.gate_budget_waits = Counter(
            "albm_gate_budget_waits",
            "Evictions the deletion gate held before starting their removal, waiting for room in the pod's "
            "PodDisruptionBudget: it allowed none, or the evictions already held took all it allows",
            registry=r,
        )
        self.webhook_refused = Counter(
            "albm_webhook_refused",
            "Requests to the webhook port refused before any review was read: tls (the TLS handshake failed: no "
            "client certificate or an untrusted one under mTLS, or no TLS at all), path (not the review path with "
            "this install's token: 404), body (not JSON: 400)",
            ["reason"],
            registry=r,
        )
        self.gate_hold_seconds = Histogram(
            "albm_gate_hold_seconds",
            "How long the deletion gate held a member pod's deletion",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.exposure_seconds = Histogram(
            "albm_exposure_seconds",
            "Seconds a pod was terminating while its server was still in rotation: 0 for a deletion the gate held "
            "until its servers were out; otherwise to the removal job's success, from the gate's let-through or "
            "the deletion's start (gate: whether the pod's resource has the deletion gate on)",
            ["gate"],
            buckets=(0, *LATENCY_BUCKETS),
            registry=r,
        )
        self.leader = Gauge("albm_leader", "1 while this replica acts, 0 while it stands by", registry=r)
        self.additions = Counter(
            "albm_additions", "Servers added to groups (registration and undo), by outcome", ["outcome"], registry=r
        )
        self.undone = Counter(
            "albm_removals_undone",
            "Servers put back into their group after a removal that turned out wrong, by reason",
            ["reason"],
            registry=r,
        )
        self.ready_to_traffic_seconds = Histogram(
            "albm_registration_seconds",
            "From an addition's decision (a member ready) to its server Available in the group",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gate_conditions = Counter(
            "albm_readiness_gate_patches", "Pod readiness-gate conditions written, by status", ["status"], registry=r
        )
        # Every outcome an alert counts exists from the start, at 0: a first count is then an increase.
        for status in ("Succeeded", "Failed", "Unknown"):
            self.jobs.labels(status)
        for outcome in GATE_OUTCOMES:
            self.gate_outcomes.labels(outcome)
        for reason in WEBHOOK_REFUSALS:
            self.webhook_refused.labels(reason)
        for outcome in ADDITION_OUTCOMES:
            self.additions.labels(outcome)
        for reason in UNDO_REASONS:
            self.undone.labels(reason)
        self.resources_degraded = Gauge(
            "albm_resources_degraded", "ServerGroupMemberships whose Degraded condition is True", registry=r
        )

    def track_pending(self, oldest: Callable[[], dict[str, float]]) -> None:
        """``oldest``: server group -> age of its oldest pending removal, read at each scrape."""
        self.registry.register(_OldestPending(oldest))

    def observe_call(self, action: str, code: str, seconds: float) -> None:
        self.api_calls.labels(action, code).inc()
        self.api_seconds.labels(action).observe(seconds)


class _OldestPending(Collector):
    def __init__(self, oldest: Callable[[], dict[str, float]]) -> None:
        self._oldest = oldest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "albm_pending_oldest_seconds",
            "Seconds since the oldest removal still pending in the server group was decided",
            labels=["server_group"],
        )
        for group, seconds in sorted(self._oldest().items()):
            family.add_metric([group], seconds)
        yield family
