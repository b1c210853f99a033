"""The deletion gate (PRODUCT.md 3.10): an admission review of `DELETE pods` or `CREATE pods/eviction` for a member
pod of a resource with `deletionGate.enabled` starts the pod's removal at once (the same ledger, batching and
ClientTokens as every other trigger) and is answered only once every server of the pod is out of rotation, as the
cloud shows it (gate/evidence.py), or the resource's `maxWaitSeconds` ran out. It never denies.

Why an admission hold: the kubelet starts a pod's termination (preStop, SIGTERM) the moment the API server sets its
deletionTimestamp, so a removal that starts then races the signal. Held here, the deletionTimestamp is set only
after the server stopped receiving new requests.

Trust the store, not the body (PRODUCT.md 3.14): a review names a pod; the gate acts only on the pod its own watches
know under that namespace and name, with the UID the review gives (a DELETE always carries the pod as oldObject, an
eviction may name a UID precondition). Labels, IPs and annotations come from the store, never from the request, so
a forged oldObject or a random UID changes nothing and adds nothing to any set.

Evictions and PodDisruptionBudgets: the Eviction API judges a budget only after admission, so an eviction it will
refuse must not take its pod's servers out, and evictions sent at once (``kubectl drain``) must not all read the
same room: each takes a slot in its pod's budgets before its removal starts, and waits (within its hold's time)
while the evictions this gate holds take all that a budget allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.engine.reconciler import Reconciler
from alb_membership.gate.evidence import GroupListings
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import GroupKey, GroupLedger, Removal
from alb_membership.model.membership import PodView
from alb_membership.model.owners import picks
from alb_membership.model.spec import Spec
from alb_membership.model.view import LiveView

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
MAX_HOLDS = 500  # deletions held at once; more start their removal and are let through unconfirmed
SWEEP_SECONDS = 5.0  # the gated set, the listing cache and the slots are pruned this often, whatever else happens
HANDED_OVER = "handed-over"  # not an answer: this replica stopped leading mid-hold; the new leader answers
BUDGET_READ_SECONDS = 1.0  # an eviction waiting for a budget's slot reads the budgets again at most this often
# An eviction's slot outlives its answer by this: the Eviction API takes the disruption off the budget's status in
# the same request, after admission, and a read right after the answer may not show it yet.
SLOT_GRACE_SECONDS = 2.0
Budgets = list[tuple[str, int]]  # the PodDisruptionBudgets that pick a pod: (uid, status.disruptionsAllowed)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Review:
    uid: str
    namespace: str
    pod_name: str
    pod_uid: str | None  # DELETE: the oldObject's (always sent by the API server); eviction: its precondition's
    dry_run: bool
    eviction: bool
    of_a_pod: bool  # a DELETE of pods or a CREATE of pods/eviction: anything else is no business of the gate

    @classmethod
    def parse(cls, body: Any) -> Review:
        request = _mapping(_mapping(body).get("request"))
        resource = _mapping(request.get("resource"))
        pods = resource.get("group") == "" and resource.get("resource") == "pods"
        sub = _text(request.get("subResource"))
        eviction = pods and sub == "eviction" and request.get("operation") == "CREATE"
        delete = pods and sub == "" and request.get("operation") == "DELETE"
        namespace, name = _text(request.get("namespace")), _text(request.get("name"))
        pod_uid: str | None = None
        if delete:
            # Only the identity of the oldObject is read, and only to be matched against the store's pod.
            meta = _mapping(_mapping(request.get("oldObject")).get("metadata"))
            if _text(meta.get("namespace")) in ("", namespace) and _text(meta.get("name")) in ("", name):
                pod_uid = _text(meta.get("uid")) or None
        elif eviction:
            options = _mapping(_mapping(request.get("object")).get("deleteOptions"))
            pod_uid = _text(_mapping(options.get("preconditions")).get("uid")) or None
        return cls(
            uid=_text(request.get("uid")),
            namespace=namespace,
            pod_name=name,
            pod_uid=pod_uid,
            dry_run=request.get("dryRun") is True,
            eviction=eviction,
            of_a_pod=delete or eviction,
        )


def answer(uid: str, warning: str | None = None) -> dict[str, Any]:
    """Always allowed: the gate delays, it never refuses."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if warning:
        response["warnings"] = [warning]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def pod_of(store: LiveView, review: Review) -> PodView | None:
    """The pod the review is about, as this replica's watches know it: same namespace and name, and the review's
    UID (required for a DELETE, whose oldObject always has it; an eviction without a UID precondition evicts the
    pod of that name). None for anything else: a forged or stale review, or one for a pod not watched."""
    if not review.of_a_pod or not review.namespace or not review.pod_name:
        return None
    if not review.eviction and review.pod_uid is None:
        return None
    return next(
        (p for p in store.pods(review.namespace) if p.name == review.pod_name and review.pod_uid in (None, p.uid)),
        None,
    )


@dataclass(frozen=True)
class Hold:
    """How long a pod's deletion may be held (the longest maxWaitSeconds among the gated resources that pick it),
    and which resources those are."""

    seconds: float
    resource_uids: set[str]


def hold_for(store: LiveView, pod: PodView) -> Hold | None:
    """None when no gated resource picks the pod (answered at once). Read from the store, so a standby can tell
    too."""
    if pod.going_away:
        return None
    picked = [
        (spec.gate_seconds, meta["uid"])
        for meta, spec in _specs_in(store.memberships(), pod.namespace)
        if spec.gate_seconds is not None and picks(spec, pod.namespace, pod, store)
    ]
    return Hold(max(w for w, _ in picked), {uid for _, uid in picked}) if picked else None


def _specs_in(bodies: Iterable[Mapping[str, Any]], namespace: str) -> list[tuple[Mapping[str, Any], Spec]]:
    """The resources of ``namespace`` that are not being deleted, with their specs."""
    return [
        (b["metadata"], Spec.parse(b["spec"]))
        for b in bodies
        if b["metadata"]["namespace"] == namespace and not b["metadata"].get("deletionTimestamp")
    ]


@dataclass(frozen=True)
class Verdict:
    outcome: str  # albm_gate_outcomes_total's outcome, or HANDED_OVER
    warning: str | None = None

    @property
    def handed_over(self) -> bool:
        return self.outcome == HANDED_OVER


@dataclass(eq=False)
class _Slot:
    """An eviction's place in the budgets that pick its pod, taken before its removal starts. The Eviction API
    counts an eviction against a budget only once admitted, after the hold: without slots, evictions sent at once
    (``kubectl drain``) would all read the same room and all take their servers out."""

    budgets: frozenset[str]  # their uids
    until: float = math.inf  # for good while held; once answered, to the end of its grace (the gate's clock)


@dataclass
class _Awaited:
    """A server a hold waits for, and what it has seen of its removal."""

    ledger: GroupLedger
    server: Server
    removal: Removal | None  # as the hold began: its ``holds`` counts this hold while it waits
    jobs: set[str] = field(default_factory=set)  # its removal's JobIds as seen
    accepted_seen: float | None = None  # when this hold first saw its removal accepted (the gate's clock)

    @property
    def decided_at(self) -> Any:
        """The removal's decision time when the hold began (a job submitted since then may prove it)."""
        return self.removal.decided_at if self.removal is not None else None


class Gate:
    def __init__(
        self,
        reconciler: Reconciler,
        store: LiveView,
        client_for: Callable[[str], AlbClient],
        metrics: Metrics,
        budgets: Callable[[str, PodView], Awaitable[Budgets]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._client_for = client_for
        self._metrics = metrics
        self._budgets = budgets
        self._clock = clock
        self.listings = GroupListings(self._read_page, clock=clock)
        self._awaited: dict[GroupKey, Counter[Server]] = {}  # group -> servers the holds wait for (a listing's ids)
        self.holds = 0
        self._slots: set[_Slot] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def _read_page(self, key: GroupKey, server_ids: list[str]) -> tuple[list[dict[str, Any]], bool]:
        return await self._client_for(key[0]).servers_page(key[1], server_ids)

    # -- its own clock ------------------------------------------------------------------------------------------

    def start(self) -> None:
        async def sweep_forever() -> None:
            while True:
                await asyncio.sleep(SWEEP_SECONDS)
                self.sweep()

        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(sweep_forever(), name="gate-sweeper")

    def sweep(self) -> None:
        """The gated set, the listing cache and the budgets' slots, pruned whether or not any call or review
        happens."""
        self._reconciler.gated.prune()
        self.listings.prune()
        self._prune_slots()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    # -- reviews ------------------------------------------------------------------------------------------------

    async def review(self, review: Review, deadline: float | None = None) -> Verdict:
        """Always a verdict, counted (a failure here must not turn into the API server's silent Ignore), except
        HANDED_OVER, which the webhook passes to the new leader. ``deadline`` (this clock): when whoever asked
        stops waiting (a standby that forwarded the review)."""
        try:
            verdict = await self._review(review, deadline)
        except Exception as exc:
            log.exception("deletion of pod %s/%s let through: the gate failed", review.namespace, review.pod_name)
            verdict = Verdict("error", f"alb-membership-operator: the deletion gate failed ({type(exc).__name__})")
        if not verdict.handed_over:
            self._metrics.gate_outcomes.labels(verdict.outcome).inc()
        return verdict

    async def _review(self, review: Review, deadline: float | None) -> Verdict:
        if review.dry_run:
            return Verdict("dry-run")
        pod = pod_of(self._store, review)
        if pod is None:
            return Verdict("unknown-pod")
        hold = hold_for(self._store, pod)
        if hold is None:
            return Verdict("not-a-member")
        started = self._clock()
        until = started + max(0.0, hold.seconds if deadline is None else min(hold.seconds, deadline - started))
        if not review.eviction:
            return await self._gated(review, pod, hold, started, until)
        slot = await self._slot(review, pod, started, until)
        if isinstance(slot, Verdict):
            return slot
        try:
            return await self._gated(review, pod, hold, started, until)
        finally:
            slot.until = self._clock() + SLOT_GRACE_SECONDS

    async def _gated(self, review: Review, pod: PodView, hold: Hold, started: float, until: float) -> Verdict:
        """The pod's removal starts now; its deletion is held until its servers are out, or let through."""
        if self._reconciler.stopped:
            return Verdict(HANDED_OVER)
        if self.holds >= MAX_HOLDS:
            if hold.resource_uids <= self._reconciler.resources.keys():
                self._reconciler.let_through(self._reconciler.gate(pod))  # out as soon as can be, and counted
            return self._expect(
                pod,
                Verdict(
                    "too-many", "alb-membership-operator: too many deletions held at once; let through unconfirmed"
                ),
            )
        self.holds += 1
        try:
            verdict = await self._hold(review, pod, hold, started, until)
        finally:
            self.holds -= 1
        return self._expect(pod, verdict)

    def _expect(self, pod: PodView, verdict: Verdict) -> Verdict:
        """The deletion goes ahead: if it never comes (refused after this gate), the pod's removal is undone."""
        if not verdict.handed_over and pod.uid in self._reconciler.gated:
            self._reconciler.expect_deletion(pod.namespace, pod.uid)
        return verdict

    async def _hold(self, review: Review, pod: PodView, hold: Hold, started: float, until: float) -> Verdict:
        # Just after a takeover, kopf may not have loaded every resource yet (with its status: pending removals).
        while not hold.resource_uids <= self._reconciler.resources.keys():
            if self._reconciler.stopped:
                return Verdict(HANDED_OVER)
            if self._clock() >= until:
                return self._timed_out(review, started, [])
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, until - self._clock())))
        leaving = self._reconciler.gate(pod)
        if not leaving:
            # Nothing to wait for, so nothing to confirm: no server of the pod is known (no IP yet, an ENI not
            # annotated, already removed) or its resources are dry runs (nothing leaves).
            self._metrics.gate_hold_seconds.observe(self._clock() - started)
            log.warning(
                "deletion of pod %s/%s let through: no server of it to wait for", review.namespace, review.pod_name
            )
            return Verdict(
                "no-servers",
                "alb-membership-operator: no server of this pod to wait for (none known to the operator, or its "
                "resource is a dry run); let through unconfirmed",
            )
        awaited = [self._awaiting(ledger, server) for ledger, server in leaving]
        try:
            outcome = await self._until_out(awaited, until)
        except BaseException:
            self._reconciler.let_through(leaving)  # failed or cancelled: the deletion goes ahead unconfirmed
            raise
        finally:
            for w in awaited:
                self._done_awaiting(w)
        if outcome == HANDED_OVER:
            return Verdict(HANDED_OVER)
        held = self._clock() - started
        if outcome == "timed-out":
            return self._timed_out(review, started, leaving)
        self._metrics.gate_hold_seconds.observe(held)
        if outcome == "confirmed":
            self._reconciler.held_out(leaving)  # exposure 0, however its removal ends (observed here)
        if outcome == "kept":
            # Its servers stay: another live pod holds them (hostNetwork), or a dry run removes nothing.
            return Verdict(
                "kept", "alb-membership-operator: this pod's servers stay in the group (held by another pod)"
            )
        self._metrics.exposure_seconds.labels("true").observe(0.0)
        log.info(
            "deletion of pod %s/%s held %.2fs: its servers are out of rotation", review.namespace, review.pod_name, held
        )
        return Verdict(
            "confirmed", f"alb-membership-operator: held {held:.2f}s until this pod's servers were out of rotation"
        )

    def _timed_out(self, review: Review, started: float, leaving: list[tuple[GroupLedger, Server]]) -> Verdict:
        held = self._clock() - started
        self._metrics.gate_hold_seconds.observe(held)
        self._reconciler.let_through(leaving)
        log.warning(
            "deletion of pod %s/%s let through after %.2fs: its servers are not out of rotation yet",
            review.namespace,
            review.pod_name,
            held,
        )
        return Verdict(
            "timed-out",
            f"alb-membership-operator: let through after {held:.2f}s, this pod's servers not yet confirmed out of "
            "rotation",
        )

    # -- disruption budgets ------------------------------------------------------------------------------------

    async def _slot(self, review: Review, pod: PodView, started: float, until: float) -> _Slot | Verdict:
        """An eviction's slot in every budget that picks its pod, once one has room, or its answer without one:
        pdb-blocked (a budget allowed no disruption to the end of the review's time: the Eviction API refuses it
        after admission, so its servers stay), timed-out (the evictions this gate holds took the budgets' room for
        all of the review's time), HANDED_OVER. A budget that allows none now is waited for too: let through
        at once, the eviction would be admitted unheld if a replacement turned Ready before the API judged it."""
        waited = False
        while True:
            read_at = self._clock()
            # Within the review's time (an API server that hangs: error).
            budgets = await asyncio.wait_for(self._budgets(review.namespace, pod), max(0.01, until - self._clock()))
            blocked = any(allowed <= 0 for _, allowed in budgets)
            if not blocked and self._room(budgets):
                # No await since the room was counted: no other review takes it meanwhile.
                slot = _Slot(frozenset(uid for uid, _ in budgets))
                self._slots.add(slot)
                return slot
            if not waited:
                waited = True
                self._metrics.gate_budget_waits.inc()
                log.info(
                    "eviction of pod %s/%s waits: %s",
                    review.namespace,
                    review.pod_name,
                    "its budgets allow no disruption now"
                    if blocked
                    else "the evictions held take every disruption its budgets allow",
                )
            # Read again after a second, or once a slot frees by the last read (a held eviction answered and its
            # grace ended), whichever is later.
            while not (self._clock() - read_at >= BUDGET_READ_SECONDS and (blocked or self._room(budgets))):
                if self._reconciler.stopped:
                    return Verdict(HANDED_OVER)
                if self._clock() >= until:
                    return Verdict("pdb-blocked") if blocked else self._timed_out(review, started, [])
                await asyncio.sleep(min(POLL_SECONDS, max(0.0, until - self._clock())))
            if self._clock() >= until:
                return Verdict("pdb-blocked") if blocked else self._timed_out(review, started, [])

    def _room(self, budgets: Budgets) -> bool:
        """Whether each budget allows more disruptions than the evictions this gate holds (or just let through)
        under it."""
        self._prune_slots()
        return all(sum(uid in s.budgets for s in self._slots) < allowed for uid, allowed in budgets)

    def _prune_slots(self) -> None:
        now = self._clock()
        self._slots = {s for s in self._slots if s.until > now}

    @property
    def slots(self) -> int:
        """Evictions counted against their budgets now: held, or answered less than the grace ago."""
        return len(self._slots)

    # -- waiting for the cloud ----------------------------------------------------------------------------------

    def _awaiting(self, ledger: GroupLedger, server: Server) -> _Awaited:
        entry = ledger.entries.get(server)
        removal = entry.removal if entry is not None else None
        if removal is not None:
            removal.holds += 1  # a job that ends now ends before the deletion: no exposure (engine/timings.py)
        self._awaited.setdefault(ledger.key, Counter())[server] += 1
        return _Awaited(ledger, server, removal)

    def _done_awaiting(self, w: _Awaited) -> None:
        if w.removal is not None:
            w.removal.holds -= 1
        waiting = self._awaited.get(w.ledger.key)
        if waiting is not None:
            waiting[w.server] -= 1
            if waiting[w.server] <= 0:
                del waiting[w.server]
            if not waiting:
                del self._awaited[w.ledger.key]

    async def _until_out(self, awaited: list[_Awaited], until: float) -> str:
        """confirmed (every server out), kept (the others out, some held by a live owner), timed-out, or
        HANDED_OVER (this replica stopped leading: the new leader answers, as soon as it leads)."""
        pending = list(awaited)
        kept = False
        while True:
            if self._reconciler.stopped:
                return HANDED_OVER
            still = []
            for w in pending:
                seen = await self._seen(w, until)
                kept |= seen == "kept"
                if seen == "pending":
                    still.append(w)
            pending = still
            if not pending:
                return "kept" if kept else "confirmed"
            left = until - self._clock()
            if left <= 0:
                # A last look at the jobs (no listing): one that ended since the look above proves it still.
                return "confirmed" if all(self._job_succeeded(w) for w in pending) else "timed-out"
            await asyncio.sleep(min(POLL_SECONDS, left))

    async def _seen(self, w: _Awaited, until: float) -> str:
        """out (proven), kept (a live owner holds it: it stays), or pending."""
        entry = w.ledger.entries.get(w.server)
        removal = entry.removal if entry is not None else None
        if removal is not None and removal.job_id:
            w.jobs.add(removal.job_id)
            if w.accepted_seen is None:
                w.accepted_seen = self._clock()
        if self._job_succeeded(w):
            return "out"
        if removal is None and entry is not None and entry.live_owners():
            return "kept"  # called off before its call went out: a live pod holds the server
        if removal is not None and removal.job_id is None:
            return "pending"  # not accepted yet: in the group as far as anyone knows
        wanted = self._awaited.get(w.ledger.key, Counter()).keys()
        try:
            listed = await asyncio.wait_for(
                # Only a read begun after the removal was accepted says anything of it: an older one may predate
                # the server itself (an IP reused by a new pod, its server added a moment ago).
                self.listings.verdict(w.ledger.key, w.server, wanted, since=w.accepted_seen or self._clock()),
                max(0.01, until - self._clock()),
            )
        except TimeoutError:
            return "pending"
        return "out" if listed == "out" else "pending"

    def _job_succeeded(self, w: _Awaited) -> bool:
        """A job that removed the server Succeeded: one of its removal's JobIds as seen, or one submitted for it
        since the hold's removal was decided (a hold that missed the JobId between two looks)."""
        compact = w.server.compact
        for state in self._reconciler.resources.values():
            if state.group != w.ledger.key:
                continue
            for job in state.jobs:
                if job.status != "Succeeded":
                    continue
                if job.job_id in w.jobs:
                    return True
                if w.decided_at is not None and compact in job.servers and job.submitted_at >= w.decided_at:
                    return True
        return False
