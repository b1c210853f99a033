"""The deletion gate (PRODUCT.md 3.10): an admission review of `DELETE pods` or `CREATE pods/eviction` for a member
pod of a resource with `deletionGate.enabled` starts the pod's removal at once (the same ledger, batching and
ClientTokens as every other trigger) and is answered only once every server of the pod is out of rotation
(Draining or gone), or the resource's `maxWaitSeconds` ran out. It never denies.

Why an admission hold: the kubelet starts a pod's termination (preStop, SIGTERM) the moment the API server sets its
deletionTimestamp, so a removal that starts then races the signal. Held here, the deletionTimestamp is set only
after the server stopped receiving new requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.cluster.store import ClusterStore
from alb_membership.engine.reconciler import Reconciler
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import GroupKey, GroupLedger
from alb_membership.model.membership import PodView
from alb_membership.model.owners import picks
from alb_membership.model.spec import Spec

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
GROUP_READ_SECONDS = 0.5  # how often a group's servers are read while a gated removal's job runs
MAX_HOLDS = 500  # deletions held at once; more are let through unconfirmed (a flood, or someone abusing the port)


@dataclass(frozen=True)
class Review:
    uid: str
    namespace: str
    pod_name: str
    pod: PodView | None  # in the request for DELETE; looked up for an eviction
    dry_run: bool
    eviction: bool
    pod_uid: str | None  # an eviction's precondition, when it names one

    @classmethod
    def parse(cls, body: dict[str, Any], eni_annotation: str) -> Review:
        request = body.get("request") or {}
        old = request.get("oldObject")
        eviction = request.get("subResource") == "eviction"
        options = ((request.get("object") or {}).get("deleteOptions") or {}) if eviction else {}
        return cls(
            uid=request.get("uid", ""),
            namespace=request.get("namespace", ""),
            pod_name=request.get("name", ""),
            pod=PodView.from_body(old, eni_annotation) if old else None,
            dry_run=bool(request.get("dryRun")),
            eviction=eviction,
            pod_uid=(options.get("preconditions") or {}).get("uid"),
        )


def answer(uid: str, warning: str | None = None) -> dict[str, Any]:
    """Always allowed: the gate delays, it never refuses."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if warning:
        response["warnings"] = [warning]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


@dataclass(frozen=True)
class Hold:
    """How long a pod's deletion may be held (the longest maxWaitSeconds among the gated resources that pick it),
    and which resources those are."""

    seconds: float
    resource_uids: set[str]


def hold_for(store: ClusterStore, review: Review) -> Hold | None:
    """None when no gated resource picks the pod (answered at once). Read from the store, so a standby can tell
    too."""
    pod = review.pod or find_pod(store, review.namespace, review.pod_name, review.pod_uid)
    if pod is None or pod.going_away:
        return None
    picked = [
        (spec.gate_seconds, meta["uid"])
        for meta, spec in _specs_in(store.memberships(), review.namespace)
        if spec.gate_seconds is not None and picks(spec, review.namespace, pod, store)
    ]
    return Hold(max(w for w, _ in picked), {uid for _, uid in picked}) if picked else None


def _specs_in(bodies: Iterable[Mapping[str, Any]], namespace: str) -> list[tuple[Mapping[str, Any], Spec]]:
    """The resources of ``namespace`` that are not being deleted, with their specs."""
    return [
        (b["metadata"], Spec.parse(b["spec"]))
        for b in bodies
        if b["metadata"]["namespace"] == namespace and not b["metadata"].get("deletionTimestamp")
    ]


def find_pod(store: ClusterStore, namespace: str, name: str, uid: str | None = None) -> PodView | None:
    return next((p for p in store.pods(namespace) if p.name == name and uid in (None, p.uid)), None)


class Gate:
    def __init__(
        self,
        reconciler: Reconciler,
        store: ClusterStore,
        client_for: Callable[[str], AlbClient],
        metrics: Metrics,
        eni_annotation: str,
        budgets: Callable[[str, PodView], Awaitable[bool]],
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._client_for = client_for
        self._metrics = metrics
        self._eni_annotation = eni_annotation
        self._budgets_allow = budgets
        self._listed: dict[GroupKey, tuple[float, set[Server]]] = {}  # group -> (when read, servers in rotation)
        self._reading: dict[GroupKey, asyncio.Lock] = {}  # one listing of a group at a time, shared by all holds
        self._holds = 0

    async def review(self, body: dict[str, Any]) -> dict[str, Any]:
        """Always answers (allowed): a failure here must not turn into the API server's silent Ignore."""
        review = Review.parse(body, self._eni_annotation)
        try:
            outcome, warning = await self._review(review)
        except Exception as exc:
            log.exception("deletion of pod %s/%s let through: the gate failed", review.namespace, review.pod_name)
            outcome, warning = "error", f"alb-membership-operator: the deletion gate failed ({type(exc).__name__})"
        self._metrics.gate_outcomes.labels(outcome).inc()
        return answer(review.uid, warning)

    async def _review(self, review: Review) -> tuple[str, str | None]:
        if review.dry_run:
            return "dry-run", None
        hold = hold_for(self._store, review)
        if hold is None:
            return "not-a-member", None
        pod = review.pod or find_pod(self._store, review.namespace, review.pod_name, review.pod_uid)
        if pod is None:
            return "not-a-member", None
        if review.eviction and not await self._budgets_allow(review.namespace, pod):
            # The Eviction API checks PodDisruptionBudgets after admission: a refused eviction must not have
            # taken the pod's servers out.
            return "pdb-blocked", None
        if self._reconciler.stopped:
            return "stopping", "alb-membership-operator: this replica is stopping; deletion let through unconfirmed"
        if self._holds >= MAX_HOLDS:
            return "too-many", "alb-membership-operator: too many deletions held at once; let through unconfirmed"
        started = time.monotonic()
        self._holds += 1
        try:
            leaving = await asyncio.wait_for(self._hold(pod, hold.resource_uids), hold.seconds)
        except TimeoutError:
            held = time.monotonic() - started
            self._metrics.gate_hold_seconds.observe(held)
            log.warning(
                "deletion of pod %s/%s let through after %.1fs: its servers are not out of rotation yet",
                review.namespace,
                review.pod_name,
                held,
            )
            return "timed-out", f"alb-membership-operator: this pod's servers still in rotation after {held:.1f}s"
        finally:
            self._holds -= 1
        held = time.monotonic() - started
        self._metrics.gate_hold_seconds.observe(held)
        if not leaving:
            # Its servers stay: another live pod holds them (hostNetwork), or a dry run removes nothing.
            return "kept", "alb-membership-operator: this pod's servers stay in the group (held by another pod)"
        self._metrics.exposure_seconds.labels("true").observe(0.0)
        log.info(
            "deletion of pod %s/%s held %.2fs: its servers are out of rotation", review.namespace, review.pod_name, held
        )
        return "confirmed", f"alb-membership-operator: held {held:.1f}s until this pod's servers were out of rotation"

    async def _hold(self, pod: PodView, uids: set[str]) -> list[tuple[GroupLedger, Server]]:
        """Waits until the pod's servers are out of rotation; returns those that were removed (the others stay)."""
        # Just after a takeover, kopf may not have loaded every resource yet (with its status: pending removals).
        while True:
            if uids <= self._reconciler.resources.keys():
                break
            await asyncio.sleep(POLL_SECONDS)
        leaving = self._reconciler.gate(pod)
        pending = list(leaving)
        while pending:
            pending = [(ledger, s) for ledger, s in pending if not await self._is_out(ledger, s)]
            if pending:
                await asyncio.sleep(POLL_SECONDS)
        return leaving

    async def _is_out(self, ledger: GroupLedger, server: Server) -> bool:
        entry = ledger.entries.get(server)
        if entry is None or entry.removal is None:
            return True  # removed (gate() only returns servers whose removal was decided)
        if entry.removal.job_id is None:
            return False  # not accepted yet
        # Accepted: out of rotation as soon as the group shows it Draining or gone, which may be long before the
        # job ends (when the job waits out the drain). One listing per group at a time, shared by every hold.
        async with self._reading.setdefault(ledger.key, asyncio.Lock()):
            read_at, in_rotation = self._listed.get(ledger.key, (0.0, set()))
            if time.monotonic() - read_at > GROUP_READ_SECONDS:
                try:
                    in_rotation = await self._client_for(ledger.key[0]).servers_in_rotation(ledger.group_id)
                except Exception as exc:  # not out as far as anyone knows: the next look may do better
                    log.warning("could not list %s: %s", ledger.group_id, exc)
                    self._listed[ledger.key] = (time.monotonic(), {server})
                    return False
                self._listed[ledger.key] = (time.monotonic(), in_rotation)
        return server not in in_rotation
