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
same room: the gate judges each as the API will (model/budgets.py), and one that needs a disruption of its pod's
budget takes a slot there before its removal starts, waiting (within its hold's time) while the budget allows
none or the evictions this gate holds take all it allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.engine.reconciler import Reconciler
from alb_membership.gate.evidence import GroupListings
from alb_membership.metrics import Metrics
from alb_membership.model.budgets import REFUSED, UNCHECKED, Budget, budgets_of, judgement
from alb_membership.model.ledger import GroupKey, GroupLedger, Removal
from alb_membership.model.membership import PodView
from alb_membership.model.owners import picks
from alb_membership.model.spec import Spec
from alb_membership.model.view import LiveView

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
MAX_HOLDS = 500  # deletions held at once; more start their removal and are let through unconfirmed
SWEEP_SECONDS = 5.0  # the gated set, listing cache, slots and budget reads are pruned this often, whatever happens
HANDED_OVER = "handed-over"  # not an answer: this replica stopped leading mid-hold; the new leader answers
# A namespace's PodDisruptionBudgets are read at most this often, one read shared by every eviction waiting there
# (a budget whose room grows is noticed by the next read).
BUDGET_READ_SECONDS = 1.0
# An eviction's wait for its budget's room ends this long before its time, with one more read to answer by: an
# answer from an older read could miss room that came since (a replacement turned Ready).
LAST_READ_SECONDS = 1.0
MIN_READ_SECONDS = 0.2  # no read of the budgets starts with less time than this left: the last one's state answers
# An answered eviction's slot counts against its budget until its pod shows in the budget's status.disruptedPods,
# a read begun after the pod was seen going away, or this long after the answer (the reconciler's
# undo_after_seconds: taken as refused, its removal is undone by then).
SLOT_SECONDS = 5.0


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
    """An eviction's place in the one budget that picks its pod, taken before its removal starts. The Eviction API
    takes a disruption off a budget only once the eviction is admitted, after the hold: without slots, evictions
    sent at once (``kubectl drain``) would all read the same room and all take their servers out."""

    budget: str  # its uid
    namespace: str
    pod_name: str  # as status.disruptedPods names it
    pod_uid: str
    answered: float | None = None  # None while held (the gate's clock)
    gone_seen: float | None = None  # when the store first showed its pod going away or gone


@dataclass(eq=False)
class _Read:
    """One read of a namespace's budgets, shared by every eviction that waits there."""

    started: float  # the gate's clock
    task: asyncio.Task[list[Budget]]

    @property
    def budgets(self) -> list[Budget] | None:
        """As read; None while in flight or if it failed."""
        if not self.task.done() or self.task.cancelled() or self.task.exception() is not None:
            return None
        return self.task.result()


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
        budgets: Callable[[str], Coroutine[Any, Any, list[Budget]]],
        clock: Callable[[], float] = time.monotonic,
        slot_seconds: float = SLOT_SECONDS,
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._client_for = client_for
        self._metrics = metrics
        self._budgets = budgets
        self._clock = clock
        self._slot_seconds = slot_seconds
        self.listings = GroupListings(self._read_page, clock=clock)
        self._awaited: dict[GroupKey, Counter[Server]] = {}  # group -> servers the holds wait for (a listing's ids)
        self.holds = 0
        self._slots: dict[str, list[_Slot]] = {}  # budget uid -> the evictions counted against it
        self._reads: dict[str, _Read] = {}  # namespace -> its latest read of the budgets
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
        self._prune_reads()

    async def close(self) -> None:
        for read in self._reads.values():
            read.task.cancel()  # one an API server never answers would outlive the gate
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
        return await self._evicted(review, pod, hold, started, until)

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
        verdict = Verdict("error")  # if the hold raises: let through all the same, so expected
        try:
            verdict = await self._hold(review, pod, hold, started, until)
        finally:
            self.holds -= 1
            self._expect(pod, verdict)
        return verdict

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

    async def _evicted(self, review: Review, pod: PodView, hold: Hold, started: float, until: float) -> Verdict:
        """An eviction, judged as the Eviction API will judge it after admission: one it deletes unchecked is
        gated like a DELETE; one it needs a disruption of the pod's budget for takes a slot first (or does not go
        ahead). Every exit that holds no removal observes its time here."""
        try:
            slot = await self._budget_slot(review, pod, hold, started, until)
        except BaseException:
            self._metrics.gate_hold_seconds.observe(self._clock() - started)
            raise
        if isinstance(slot, Verdict):
            self._metrics.gate_hold_seconds.observe(self._clock() - started)
            return slot
        if slot is None:
            return await self._gated(review, pod, hold, started, until)
        try:
            return await self._gated(review, pod, hold, started, until)
        finally:
            slot.answered = self._clock()

    async def _budget_slot(
        self, review: Review, pod: PodView, hold: Hold, started: float, until: float
    ) -> _Slot | Verdict | None:
        """The eviction's slot in its pod's budget, once that has room; None when no budget judges it (see
        ``judgement``); else its answer without one: pdb-blocked (refused by the API: picked by several budgets at
        once, or its budget allowed none by the last read, just before the end of its time), timed-out (the
        evictions held here took its budget's room all that time: let through with its removal started, since the
        API admits it), HANDED_OVER. A budget that allows none now is waited for too: let through at once, the
        eviction would be admitted unheld if a replacement turned Ready before the API judged it."""
        if pod.pending:
            return None  # deleted unchecked; terminating and terminal pods are no member's (hold_for)
        # Shared with the evictions sent together (begun within the last second); one that does not answer within
        # the hold leaves nothing to answer by (error, nothing removed).
        read = await self._read(review.namespace, started - BUDGET_READ_SECONDS, until)
        waited = False
        while True:
            taken = self._take(pod, read)
            if not isinstance(taken, Budget):
                return taken
            if not waited:
                waited = True
                self._metrics.gate_budget_waits.inc()
                log.info(
                    "eviction of pod %s/%s waits: %s",
                    review.namespace,
                    review.pod_name,
                    "its budget allows no disruption now"
                    if taken.allowed <= 0
                    else "the evictions held take every disruption its budget allows",
                )
            last = until - LAST_READ_SECONDS
            if self._clock() >= last:
                break
            await self._until_read_due(read, taken, last)
            if self._reconciler.stopped:
                return Verdict(HANDED_OVER)
            if self._clock() - read.started >= BUDGET_READ_SECONDS:
                read = await self._read_again(review.namespace, self._clock() - BUDGET_READ_SECONDS, until, read)
        # Answered by a read begun within the last second, not by one up to a second older.
        read = await self._read_again(review.namespace, until - LAST_READ_SECONDS, until, read)
        if self._reconciler.stopped:
            return Verdict(HANDED_OVER)
        taken = self._take(pod, read)
        if not isinstance(taken, Budget):
            return taken  # room at the last moment: held with what time is left
        if taken.allowed <= 0:
            return Verdict("pdb-blocked")  # the API refuses it (429): its servers stay
        return self._let_through_full(review, pod, hold, taken, started)

    def _take(self, pod: PodView, read: _Read) -> _Slot | Verdict | Budget | None:
        """By this read: None (no budget judges the eviction), pdb-blocked (the API refuses it), the slot taken
        (its budget has room), or its budget (full)."""
        picked = budgets_of(read.budgets or [], pod)  # a read _read returned succeeded: never None
        judged = judgement(pod, picked)
        if judged == UNCHECKED:
            return None
        if judged == REFUSED:
            return Verdict(
                "pdb-blocked",
                "alb-membership-operator: this pod is picked by more than one PodDisruptionBudget; the Eviction API "
                "refuses its eviction",
            )
        [budget] = picked
        if self._room(budget) <= 0:
            return budget
        # No await since the room was counted: no other review takes it meanwhile.
        return self._add_slot(pod, budget)

    def _add_slot(self, pod: PodView, budget: Budget) -> _Slot:
        slot = _Slot(budget.uid, pod.namespace, pod.name, pod.uid)
        self._slots.setdefault(budget.uid, []).append(slot)
        return slot

    def _let_through_full(self, review: Review, pod: PodView, hold: Hold, budget: Budget, started: float) -> Verdict:
        """The evictions held here took the budget's room to the end of this one's time, but its status still shows
        that room, so the API admits this one too: its removal starts now, counted in a slot as answered."""
        self._add_slot(pod, budget).answered = self._clock()
        if hold.resource_uids <= self._reconciler.resources.keys():
            self._reconciler.let_through(self._reconciler.gate(pod))
        log.warning(
            "eviction of pod %s/%s let through after %.2fs: its budget's room was taken by the evictions held; its "
            "removal starts now",
            review.namespace,
            review.pod_name,
            self._clock() - started,
        )
        return self._expect(
            pod,
            Verdict(
                "timed-out",
                "alb-membership-operator: let through unconfirmed, its PodDisruptionBudget's room taken by the "
                "evictions held; this pod's servers' removal started now",
            ),
        )

    async def _until_read_due(self, read: _Read, budget: Budget, end: float) -> None:
        """Polls until the budgets are due a new read, a slot of the budget freed (pruned), ``end``, or this
        replica stopped leading."""
        while not self._reconciler.stopped:
            now = self._clock()
            if now >= end or now - read.started >= BUDGET_READ_SECONDS or self._room(budget) > 0:
                return
            await asyncio.sleep(min(POLL_SECONDS, end - now))

    async def _read(self, namespace: str, since: float, until: float) -> _Read:
        """The namespace's budgets by a read begun at ``since`` or later: the one in flight or done, shared, or a
        new one (so at most one a second per namespace, however many wait). TimeoutError at ``until``; the read's
        own error otherwise (shared too: its waiters answer error)."""
        read = self._reads.get(namespace)
        fresh = read is None or read.started < since
        if read is None or fresh:
            read = _Read(self._clock(), asyncio.create_task(self._budgets(namespace), name=f"budgets-{namespace}"))
            self._reads[namespace] = read
        # Shielded: a waiter whose time ends leaves the read to the others.
        await asyncio.wait_for(asyncio.shield(read.task), max(0.01, until - self._clock()))
        if fresh:
            self._prune_slots()  # what the new read shows released, once per read (not per waiter)
        return read

    async def _read_again(self, namespace: str, since: float, until: float, last: _Read) -> _Read:
        """A read as ``_read``, or ``last`` when there is too little time left to start one, or it does not answer in
        time: an API server slow at the end of the wait must not turn it into an error."""
        if until - self._clock() < MIN_READ_SECONDS:
            return last
        try:
            return await self._read(namespace, since, until)
        except TimeoutError:
            return last

    def _room(self, budget: Budget) -> int:
        """The disruptions the budget allows beyond the evictions this gate holds or let through under it that the
        API has not yet taken off it (an admitted one is in status.disruptedPods, and already off
        disruptionsAllowed)."""
        slots = self._slots.get(budget.uid, ())
        return budget.allowed - sum(1 for s in slots if s.answered is None or s.pod_name not in budget.disrupted)

    def _prune_slots(self) -> None:
        now = self._clock()
        live: dict[str, set[str]] = {}  # namespace -> the UIDs of its pods not going away, as the store shows them
        for uid, slots in list(self._slots.items()):
            for slot in slots:
                if slot.namespace not in live:
                    live[slot.namespace] = {p.uid for p in self._store.pods(slot.namespace) if not p.going_away}
                if slot.gone_seen is None and slot.pod_uid not in live[slot.namespace]:
                    slot.gone_seen = now
            kept = [s for s in slots if not self._released(s, now)]
            if kept:
                self._slots[uid] = kept
            else:
                del self._slots[uid]

    def _released(self, slot: _Slot, now: float) -> bool:
        """An answered slot is done once its eviction was taken off the budget (its pod in disruptedPods), or never
        will be (answered undo_after_seconds ago: refused, its removal undone). Any slot is done once its pod went
        away and a read begun since shows the budget (the API takes the disruption off before the deletion; the
        disruption controller may clear disruptedPods once the pod is gone)."""
        read = self._reads.get(slot.namespace)
        budgets = read.budgets if read is not None else None
        if slot.answered is not None:
            if now - slot.answered >= self._slot_seconds:
                return True
            if any(b.uid == slot.budget and slot.pod_name in b.disrupted for b in budgets or ()):
                return True
        return slot.gone_seen is not None and budgets is not None and read is not None and read.started > slot.gone_seen

    def _prune_reads(self) -> None:
        """Reads done and due again are forgotten: the cache holds the namespaces read within the last second."""
        now = self._clock()
        self._reads = {
            ns: r
            for ns, r in self._reads.items()
            if not r.task.done() or now - r.started < BUDGET_READ_SECONDS or self._slots_in(ns)
        }

    def _slots_in(self, namespace: str) -> bool:
        return any(s.namespace == namespace for slots in self._slots.values() for s in slots)

    @property
    def slots(self) -> int:
        """Evictions counted against their budgets now: held, or answered and not yet released."""
        return sum(len(slots) for slots in self._slots.values())

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
