"""The deletion gate's own logic (issue 17): it trusts the store, not the body; it confirms a server out of rotation
only on evidence (a Succeeded job, a snapshot listing without it, Draining), never from a failed or paged listing
and never from Removing; a leader that stops mid-hold hands the review over; every let-through is exposure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.engine import outcomes
from alb_membership.engine.timings import observe_exposure
from alb_membership.gate import review as review_module
from alb_membership.gate.evidence import GroupListings, Listing
from alb_membership.gate.review import HANDED_OVER, MAX_HOLDS, Gate, Review, pod_of
from alb_membership.metrics import Metrics
from alb_membership.model import status
from alb_membership.model.budgets import Budget
from alb_membership.model.ledger import Entry, GroupKey, Removal, now
from alb_membership.model.spec import Selector
from tests.unit.fakes import RecordingKube, RecordingReconciler, View, pod, selected

GATED = {"enabled": True, "maxWaitSeconds": 20}
GROUP: GroupKey = ("cn-hangzhou", "sgp-test00000001")


def delete(name: str, uid: str | None, namespace: str = "shop", **old: Any) -> dict[str, Any]:
    """An AdmissionReview of a pod's DELETE, with an oldObject naming ``uid`` (none when ``uid`` is None); ``old``:
    more of the oldObject's metadata (``old_name`` for another pod's name)."""
    request: dict[str, Any] = {
        "uid": f"review-{name}",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "DELETE",
        "namespace": namespace,
        "name": name,
    }
    if uid is not None:
        meta = {"name": old.pop("old_name", name), "namespace": namespace, "uid": uid, **old}
        request["oldObject"] = {"metadata": meta}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def evict(name: str, uid: str | None = None, namespace: str = "shop") -> dict[str, Any]:
    options = {"preconditions": {"uid": uid}} if uid else {}
    return {
        "request": {
            "uid": f"review-{name}",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "eviction",
            "operation": "CREATE",
            "namespace": namespace,
            "name": name,
            "object": {"metadata": {"name": name}, "deleteOptions": options},
        }
    }


class Pages:
    """ListServerGroupServers as the gate reads it: one answer per call from ``answer`` (ServerIds -> (servers,
    one page)), or an exception."""

    def __init__(self, answer: Callable[[list[str]], tuple[list[dict[str, Any]], bool]]) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    async def servers_page(self, group_id: str, server_ids: list[str]) -> tuple[list[dict[str, Any]], bool]:
        self.calls.append(list(server_ids))
        return self.answer(server_ids)


def failing(_ids: list[str]) -> tuple[list[dict[str, Any]], bool]:
    raise RuntimeError("Throttling.User")


def listed(*servers: tuple[str, str]) -> Callable[[list[str]], tuple[list[dict[str, Any]], bool]]:
    """One page holding these (ip, Status) servers."""
    return lambda _ids: ([{"ServerType": "Ip", "ServerId": ip, "Port": 8080, "Status": st} for ip, st in servers], True)


class Setup:
    def __init__(self, pages: Pages, budgets_hang: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = View()
        self.kube = RecordingKube()
        self.rec = RecordingReconciler(self.view, self.kube)
        self.metrics = Metrics()
        self.pages = pages
        self.clock = clock
        self.pdbs: dict[str, Budget] = {}  # uid -> the namespace's budgets as the API server shows them now
        self.budget_reads = 0
        self.budgets_hang = budgets_hang

        async def budgets(_ns: str) -> list[Budget]:
            self.budget_reads += 1
            if self.budgets_hang:  # an API server that takes the request and never answers
                await asyncio.Event().wait()
            return list(self.pdbs.values())

        self.gate = Gate(self.rec, self.view, lambda _r: cast(AlbClient, pages), self.metrics, budgets, clock=clock)

    def members(self, *names: str, **pod_fields: Any) -> None:
        self.view.pod_list = [
            pod(n, ip=f"10.0.0.{i + 1}", labels={"app": "web", "pod": n}, **pod_fields) for i, n in enumerate(names)
        ]
        body = selected(deletionGate=GATED)
        self.view.bodies = [body]
        self.rec.start(body, repair=False)

    def budget(
        self, uid: str, allowed: int, *names: str, disrupted: tuple[str, ...] = (), admits_unready: bool = False
    ) -> None:
        """The budget ``uid`` picks these pods and allows ``allowed`` disruptions now."""
        selector = Selector(match_expressions=(("pod", "In", frozenset(names)),))
        self.pdbs[uid] = Budget(uid, selector, allowed, frozenset(disrupted), admits_unready)

    def outcome(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": outcome}) or 0.0

    def entry(self, ip: str) -> Entry | None:
        return self.rec.ledger(GROUP).entries.get(Server("Ip", ip, 8080))

    async def decided(self, *ips: str) -> list[Entry]:
        """Once the gate has decided these servers' removals (its hold's first step)."""
        for _ in range(500):
            entries = [self.entry(ip) for ip in ips]
            if all(e is not None and e.removal is not None for e in entries):
                return cast(list[Entry], entries)
            await asyncio.sleep(0.01)
        raise AssertionError(f"no removal decided for {ips}")

    async def accepted(self, *ips: str, job: str = "job-1") -> None:
        """What the pipeline does once the call is accepted: the JobId on the removals and in status."""
        batch = await self.decided(*ips)
        outcomes.record_accepted(batch, self.rec.resources.values(), job, "token-1")

    def succeeded(self, *ips: str, job: str = "job-1") -> None:
        batch = cast(list[Entry], [self.entry(ip) for ip in ips])
        outcomes.finish_removals(batch, self.rec.ledger(GROUP), list(self.rec.resources.values()), job)

    async def review(self, body: dict[str, Any], seconds: float = 20.0) -> str:
        verdict = await self.gate.review(Review.parse(body), self.clock() + seconds)
        return verdict.outcome


@pytest.fixture
def ok() -> Setup:
    return Setup(Pages(listed()))


# -- trust the store, not the body ------------------------------------------------------------------------------


def test_a_review_reads_only_the_pods_identity_and_survives_any_body() -> None:
    review = Review.parse(delete("a", "uid-a", labels={"app": "web"}))
    assert (review.namespace, review.pod_name, review.pod_uid, review.of_a_pod) == ("shop", "a", "uid-a", True)
    assert Review.parse(delete("a", "uid-a", old_name="b")).pod_uid is None, "an oldObject of another pod names nothing"
    assert Review.parse(evict("a", "uid-a")).pod_uid == "uid-a" and Review.parse(evict("a")).eviction
    configmap = delete("a", "uid-a")
    configmap["request"]["resource"]["resource"] = "configmaps"
    assert not Review.parse(configmap).of_a_pod
    for junk in ([], "x", {"request": "x"}, {"request": {"resource": [], "oldObject": 3, "namespace": 7}}):
        assert not Review.parse(junk).of_a_pod


def test_only_a_pod_the_store_knows_with_that_uid_is_acted_on() -> None:
    view = View()
    view.pod_list = [pod("a"), pod("a", uid="uid-a-other", namespace="other")]
    assert pod_of(view, Review.parse(delete("a", "uid-a"))) == view.pod_list[0]
    assert pod_of(view, Review.parse(delete("a", "uid-random"))) is None
    assert pod_of(view, Review.parse(delete("a", None))) is None, "a DELETE always carries its pod: none, no pod"
    assert pod_of(view, Review.parse(delete("a", "uid-a", namespace="other"))) is None
    assert pod_of(view, Review.parse(evict("a"))) == view.pod_list[0], "an eviction names the pod by name"
    assert pod_of(view, Review.parse(evict("a", "uid-random"))) is None


async def test_forged_reviews_change_nothing_and_grow_nothing(ok: Setup) -> None:
    ok.members("a")
    ok.view.pod_list.append(pod("api", ip="10.0.0.9", labels={"app": "api"}))
    forged = [
        delete("a", "uid-random"),  # a random UID
        delete("a", None),  # looked up by name before issue 17
        delete("api", "uid-api", labels={"app": "web"}),  # an oldObject dressed as a member
        delete("ghost", "uid-ghost", labels={"app": "web"}),  # no such pod at all
        evict("a", "uid-random"),
    ]
    answers = [await ok.review(body) for body in forged]
    assert answers == ["unknown-pod", "unknown-pod", "not-a-member", "unknown-pod", "unknown-pod"]
    assert ok.rec.sent() == [], "nothing left the group"
    assert len(ok.rec.gated) == 0, "nothing was added to the gated set"
    assert ok.entry("10.0.0.1") is not None and ok.entry("10.0.0.1").removal is None  # type: ignore[union-attr]


# -- evidence ---------------------------------------------------------------------------------------------------


def test_what_a_listing_proves() -> None:
    a, b, c = (Server("Ip", f"10.0.0.{i}", 8080) for i in (1, 2, 3))
    snapshot = Listing(0.0, frozenset({a, b, c}), {a: "Removing", b: "Draining"}, frozenset({"10.0.0.1", "10.0.0.3"}))
    assert snapshot.verdict(a) == "in", "Removing alone is no proof"
    assert snapshot.verdict(b) == "out", "Draining is (where the cloud reports it)"
    assert snapshot.verdict(c) == "out", "absent from a snapshot"
    assert snapshot.verdict(Server("Ip", "10.0.0.4", 8080)) == "unknown", "not asked about"
    paged = Listing(0.0, frozenset({a, c}), {}, frozenset())
    assert paged.verdict(c) == "unknown", "absent from a paged listing proves nothing"
    failed = Listing(0.0, frozenset({a, b, c}), failed=True)
    assert {failed.verdict(s) for s in (a, b, c)} == {"unknown"}
    other_port = Listing(0.0, frozenset({a}), {Server("Ip", "10.0.0.1", 9090): "Available"}, frozenset({"10.0.0.1"}))
    assert other_port.verdict(a) == "unknown", "its ServerId listed under another identity: no proof it is gone"


async def test_a_failed_listing_is_unknown_for_every_server_of_the_group_and_is_not_retried_at_once() -> None:
    calls = 0

    async def read(_key: GroupKey, _ids: list[str]) -> tuple[list[dict[str, Any]], bool]:
        nonlocal calls
        calls += 1
        raise RuntimeError("SystemBusy")

    listings = GroupListings(read, max_age=0.5)
    a, b = Server("Ip", "10.0.0.1", 8080), Server("Ip", "10.0.0.2", 8080)
    assert await listings.verdict(GROUP, a, {a, b}, since=0.0) == "unknown"
    assert await listings.verdict(GROUP, b, {a, b}, since=0.0) == "unknown", "before issue 17: b read as out"
    assert calls == 1, "one failed read per group per max_age, however many holds look"


async def test_a_failed_listing_confirms_no_held_deletion() -> None:
    setup = Setup(Pages(failing))
    setup.members("a", "b")
    holds = [asyncio.create_task(setup.review(delete(n, f"uid-{n}"), seconds=0.8)) for n in ("a", "b")]
    await setup.accepted("10.0.0.1", "10.0.0.2")
    assert await asyncio.gather(*holds) == ["timed-out", "timed-out"]
    assert setup.outcome("confirmed") == 0
    for ip in ("10.0.0.1", "10.0.0.2"):  # let through while still in rotation: exposed from now
        entry = setup.entry(ip)
        assert entry is not None and entry.removal is not None and entry.removal.exposed_since is not None


async def test_removing_is_no_proof_a_snapshot_without_the_server_is() -> None:
    pages = Pages(listed(("10.0.0.1", "Removing")))
    setup = Setup(pages)
    setup.members("a")
    hold = asyncio.create_task(setup.review(delete("a", "uid-a"), seconds=5))
    await setup.accepted("10.0.0.1")
    await asyncio.sleep(0.7)
    assert not hold.done(), "held while the group shows it Removing"
    pages.answer = listed()
    assert await hold == "confirmed"
    assert pages.calls and all(ids == ["10.0.0.1"] for ids in pages.calls), "only the held servers are asked about"


async def test_draining_is_out_of_rotation() -> None:
    setup = Setup(Pages(listed(("10.0.0.1", "Draining"))))
    setup.members("a")
    hold = asyncio.create_task(setup.review(delete("a", "uid-a"), seconds=5))
    await setup.accepted("10.0.0.1")
    assert await hold == "confirmed"


async def test_a_paged_listing_proves_no_absence() -> None:
    setup = Setup(Pages(lambda _ids: ([], False)))
    setup.members("a")
    hold = asyncio.create_task(setup.review(delete("a", "uid-a"), seconds=0.8))
    await setup.accepted("10.0.0.1")
    assert await hold == "timed-out"


async def test_a_succeeded_job_is_proof_even_while_every_listing_fails() -> None:
    setup = Setup(Pages(failing))
    setup.members("a")
    hold = asyncio.create_task(setup.review(delete("a", "uid-a"), seconds=5))
    await setup.accepted("10.0.0.1")
    await asyncio.sleep(0.3)
    setup.succeeded("10.0.0.1")
    assert await hold == "confirmed"
    assert setup.metrics.registry.get_sample_value("albm_exposure_seconds_count", {"gate": "true"}) == 1.0


async def test_a_removal_called_off_for_a_live_owner_is_kept_not_confirmed(ok: Setup) -> None:
    ok.members("a")
    hold = asyncio.create_task(ok.review(delete("a", "uid-a"), seconds=5))
    [entry] = await ok.decided("10.0.0.1")
    ok.rec.ledger(GROUP).cancel_held(entry.server, {("sgm-other", "uid-new"): ("pod", "new")})
    assert await hold == "kept"


@pytest.mark.parametrize("why", ["no-ip", "dry-run"])
async def test_a_member_with_nothing_to_wait_for_is_no_servers_not_kept(ok: Setup, why: str) -> None:
    """Before: answered kept, "held by another pod", which no other pod did; and not counted as unconfirmed."""
    ok.view.pod_list = [pod("a", ip=None if why == "no-ip" else "10.0.0.1")]
    body = selected(deletionGate=GATED, dryRun=why == "dry-run")
    ok.view.bodies = [body]
    ok.rec.start(body, repair=False)
    verdict = await ok.gate.review(Review.parse(delete("a", "uid-a")), time.monotonic() + 5)
    assert verdict.outcome == "no-servers" and verdict.warning is not None
    assert "another pod" not in verdict.warning and "unconfirmed" in verdict.warning
    assert ok.outcome("no-servers") == 1 and ok.outcome("kept") == 0


# -- takeovers and let-throughs ---------------------------------------------------------------------------------


async def test_a_leader_that_stops_mid_hold_hands_the_review_over(ok: Setup) -> None:
    ok.pages.answer = listed(("10.0.0.1", "Available"))
    ok.members("a")
    hold = asyncio.create_task(ok.gate.review(Review.parse(delete("a", "uid-a")), time.monotonic() + 20))
    await ok.accepted("10.0.0.1")
    await asyncio.sleep(0.2)
    ok.rec.stopped = True
    started = time.monotonic()
    verdict = await hold
    assert verdict.outcome == HANDED_OVER and time.monotonic() - started < 0.5
    assert sum(ok.outcome(o) for o in ("confirmed", "timed-out", "error")) == 0, "the new leader answers it"


async def test_too_many_holds_still_start_the_removal_and_count_its_exposure(ok: Setup) -> None:
    ok.members("a")
    ok.gate.holds = MAX_HOLDS
    assert await ok.review(delete("a", "uid-a")) == "too-many"
    entry = ok.entry("10.0.0.1")
    assert entry is not None and entry.removal is not None and entry.removal.exposed_since is not None
    assert ok.rec.sent() == ["Ip:10.0.0.1:8080"]


# -- evictions under disruption budgets --------------------------------------------------------------------------

IPS = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}  # Setup.members("a", "b", "c")


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budgets' re-reads and the last read before the end, shortened (1 s and 1 s in production)."""
    monkeypatch.setattr(review_module, "BUDGET_READ_SECONDS", 0.1)
    monkeypatch.setattr(review_module, "LAST_READ_SECONDS", 0.3)
    monkeypatch.setattr(review_module, "MIN_READ_SECONDS", 0.05)


def leaving(setup: Setup) -> set[str]:
    """The pods whose server's removal the gate ever decided (sent to the pipeline)."""
    return {name for name, ip in IPS.items() if f"Ip:{ip}:8080" in setup.rec.sent()}


def waits(setup: Setup) -> float:
    return setup.metrics.registry.get_sample_value("albm_gate_budget_waits_total") or 0.0


async def until_true(check: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not within the time")


async def test_concurrent_evictions_start_no_more_removals_than_the_budget_allows(ok: Setup, quick: None) -> None:
    """kubectl drain sends its evictions at once. Before, each read the budget's room (none admitted yet: all held
    here) and every pod's servers left; the Eviction API then refused the rest, and their servers came back."""
    ok.members("a", "b", "c")
    ok.budget("pdb-web", 1, "a", "b", "c")
    reviews = {n: asyncio.create_task(ok.review(evict(n), seconds=3)) for n in "abc"}
    await until_true(lambda: waits(ok) == 2)
    [first] = leaving(ok)
    others = sorted(set(IPS) - {first})
    await ok.accepted(IPS[first])
    assert await reviews[first] == "confirmed"
    await asyncio.sleep(0.5)  # the budget not yet showing the admitted eviction: its slot still counts
    assert leaving(ok) == {first} and not any(reviews[n].done() for n in others)
    ok.budget("pdb-web", 0, "a", "b", "c", disrupted=(first,))  # the Eviction API took the disruption off
    await asyncio.sleep(0.5)
    assert leaving(ok) == {first} and not any(reviews[n].done() for n in others), "a full budget is waited for"
    ok.budget("pdb-web", 1, "a", "b", "c", disrupted=(first,))  # a replacement turned Ready: one disruption again
    await until_true(lambda: len(leaving(ok)) == 2)
    [taken] = leaving(ok) - {first}
    [left] = set(others) - {taken}
    await ok.accepted(IPS[taken], job="job-2")
    assert await reviews[taken] == "confirmed"
    ok.budget("pdb-web", 0, "a", "b", "c", disrupted=(first, taken))
    assert await reviews[left] == "pdb-blocked", "the budget stayed full to the end of its time: the API judges it"
    assert ok.rec.sent() == [f"Ip:{IPS[first]}:8080", f"Ip:{IPS[taken]}:8080"], "the last one's server stays"
    assert ok.entry(IPS[left]).removal is None  # type: ignore[union-attr]
    assert ok.metrics.registry.get_sample_value("albm_gate_hold_seconds_count") == 3.0, "every exit observed"


async def test_a_budget_allowing_two_holds_two_and_the_third_goes_once_it_has_room_again(
    ok: Setup, quick: None
) -> None:
    ok.members("a", "b", "c")
    ok.budget("pdb-web", 2, "a", "b", "c")
    reviews = {n: asyncio.create_task(ok.review(evict(n), seconds=10)) for n in "abc"}
    await until_true(lambda: waits(ok) == 1)
    held = leaving(ok)
    assert len(held) == 2
    [third] = set(IPS) - held
    x, y = sorted(held)
    await ok.accepted(IPS[x], job="job-x")
    assert await reviews[x] == "confirmed"
    ok.budget("pdb-web", 1, "a", "b", "c", disrupted=(x,))  # x admitted; y's slot takes the one disruption left
    await asyncio.sleep(0.5)
    assert not reviews[third].done() and leaving(ok) == held
    await ok.accepted(IPS[y], job="job-y")
    assert await reviews[y] == "confirmed"
    ok.budget("pdb-web", 1, "a", "b", "c", disrupted=(x, y))  # y admitted, and a replacement Ready: room again
    await ok.accepted(IPS[third], job="job-z")
    assert await reviews[third] == "confirmed"
    assert leaving(ok) == set(IPS)


async def test_an_answered_slot_counts_until_its_pod_shows_in_the_budgets_disrupted_pods(
    ok: Setup, quick: None
) -> None:
    """The Eviction API takes the disruption off after every webhook, with conflict retries: a fixed grace after
    the answer (2 s, before) could end first, and a second eviction read the same room."""
    ok.members("a", "b")
    ok.budget("pdb-web", 1, "a", "b")
    first = asyncio.create_task(ok.review(evict("a"), seconds=6))
    await ok.accepted(IPS["a"])
    assert await first == "confirmed"
    second = asyncio.create_task(ok.review(evict("b"), seconds=6))
    await asyncio.sleep(1.0)  # the budget's status still shows the room a's eviction is about to take
    assert not second.done() and leaving(ok) == {"a"} and ok.gate.slots == 1
    ok.budget("pdb-web", 1, "a", "b", disrupted=("a",))  # a admitted, and a replacement Ready
    await ok.accepted(IPS["b"], job="job-b")
    assert await second == "confirmed" and leaving(ok) == {"a", "b"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_answered_slot_is_released_after_undo_after_seconds_or_once_its_pod_is_gone() -> None:
    clock = Clock()
    setup = Setup(Pages(listed()), clock=clock)
    setup.members("a", "b")
    setup.budget("pdb-web", 5, "a", "b")
    reviews = [asyncio.create_task(setup.review(evict(n))) for n in "ab"]
    await setup.accepted(IPS["a"], IPS["b"])
    assert await asyncio.gather(*reviews) == ["confirmed"] * 2
    assert setup.gate.slots == 2
    setup.view.pod_list = [p for p in setup.view.pod_list if p.name != "b"]  # b's deletion seen
    setup.gate.sweep()
    assert setup.gate.slots == 2, "no read since b went away: its disruption may not show in the budget yet"
    clock.now += 0.5
    await setup.gate._read("shop", clock.now, clock.now + 1)
    assert setup.gate.slots == 1, "b's released by a read begun after it went away"
    clock.now += 4.5  # 5 s (undo_after_seconds) after a's answer: never admitted, taken as refused
    setup.gate.sweep()
    assert setup.gate.slots == 0


async def test_a_waiter_whose_room_the_held_evictions_take_is_let_through_with_its_removal_started(
    quick: None,
) -> None:
    """Its budget's status still shows the room (the held ones are not admitted yet), so the Eviction API admits
    it. Before, it was let through untouched: its servers in rotation as it went."""
    setup = Setup(Pages(listed(("10.0.0.1", "Available"), ("10.0.0.2", "Available"))))
    setup.members("a", "b")
    setup.budget("pdb-web", 1, "a", "b")
    expected: list[str] = []
    setup.rec.expect_deletion = lambda _ns, uid: expected.append(uid)  # type: ignore[method-assign]
    holder = asyncio.create_task(setup.review(evict("a"), seconds=5))
    await setup.accepted("10.0.0.1")  # its server stays Available: held
    verdict = await setup.gate.review(Review.parse(evict("b")), time.monotonic() + 1.0)
    assert verdict.outcome == "timed-out" and verdict.warning is not None and "removal started" in verdict.warning
    assert leaving(setup) == {"a", "b"} and expected == ["uid-b"], "its removal started, undone if refused"
    assert setup.metrics.registry.get_sample_value("albm_gate_hold_seconds_count") == 1.0
    assert not holder.done()
    setup.pages.answer = listed()
    assert await holder == "confirmed"


async def test_an_eviction_of_a_pod_two_budgets_pick_is_pdb_blocked_at_once(ok: Setup) -> None:
    """The Eviction API refuses (500) every eviction of a pod more than one budget picks."""
    ok.members("a")
    ok.budget("pdb-web", 1, "a")
    ok.budget("pdb-canary", 1, "a")
    began = time.monotonic()
    assert await ok.review(evict("a"), seconds=10) == "pdb-blocked"
    assert time.monotonic() - began < 1.0 and leaving(ok) == set() and waits(ok) == 0 and ok.gate.slots == 0


@pytest.mark.parametrize("fields", [{"phase": "Pending"}, {"ready": False}], ids=["pending", "not-ready"])
async def test_an_eviction_the_api_does_not_judge_by_its_budget_is_held_like_a_delete(
    ok: Setup, fields: dict[str, Any]
) -> None:
    """A Pending pod is deleted without any budget check; one not Ready, when its budget lets unhealthy pods go
    (AlwaysAllow, or as many healthy as desired): neither takes a disruption, so neither waits or takes a slot."""
    ok.members("a", **fields)
    ok.budget("pdb-web", 0, "a", admits_unready=True)
    hold = asyncio.create_task(ok.review(evict("a"), seconds=5))
    await ok.accepted(IPS["a"])
    assert ok.gate.slots == 0
    assert await hold == "confirmed" and waits(ok) == 0


async def test_a_pod_no_budget_picks_takes_no_slot(ok: Setup) -> None:
    ok.members("a")
    ok.budget("pdb-api", 0)  # picks no member
    hold = asyncio.create_task(ok.review(evict("a"), seconds=5))
    await ok.accepted(IPS["a"])
    assert ok.gate.slots == 0
    assert await hold == "confirmed" and waits(ok) == 0


async def test_a_budget_check_that_hangs_does_not_outlast_the_hold() -> None:
    setup = Setup(Pages(listed()), budgets_hang=True)
    setup.members("a")
    began = time.monotonic()
    assert await asyncio.wait_for(setup.review(evict("a"), seconds=0.5), 5) == "error"
    assert time.monotonic() - began < 1.0 and setup.rec.sent() == [], "answered in the hold's time, nothing removed"


async def test_a_read_that_hangs_at_the_end_of_a_wait_answers_by_the_last_read(ok: Setup, quick: None) -> None:
    """Before, a read begun just before the end timed out: outcome error, which pages."""
    ok.members("a")
    ok.budget("pdb-web", 0, "a")
    review = asyncio.create_task(ok.review(evict("a"), seconds=1.5))
    await until_true(lambda: waits(ok) == 1)
    ok.budgets_hang = True
    assert await asyncio.wait_for(review, 5) == "pdb-blocked" and leaving(ok) == set()


async def test_room_in_the_last_read_before_the_end_takes_the_slot(ok: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """pdb-blocked is answered by a read begun within the last second: one up to a second older (before) could miss
    a replacement that turned Ready since, and the eviction be admitted untouched."""
    monkeypatch.setattr(review_module, "BUDGET_READ_SECONDS", 30.0)  # no read but the first and the last
    ok.members("a")
    ok.budget("pdb-web", 0, "a")
    review = asyncio.create_task(ok.review(evict("a"), seconds=2.5))
    await until_true(lambda: waits(ok) == 1)
    ok.budget("pdb-web", 1, "a")  # a replacement turned Ready
    await ok.accepted(IPS["a"])
    assert await review == "confirmed" and ok.budget_reads == 2


async def test_evictions_waiting_in_a_namespace_share_one_read_a_second(
    ok: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(review_module, "BUDGET_READ_SECONDS", 0.3)
    ok.members("a", "b", "c")
    ok.budget("pdb-web", 0, "a", "b", "c")
    began = time.monotonic()
    assert await asyncio.gather(*(ok.review(evict(n), seconds=2) for n in "abc")) == ["pdb-blocked"] * 3
    # Each reading on its own: 3 x (1 + elapsed / 0.3), and the last reads.
    assert ok.budget_reads <= 4 + (time.monotonic() - began) / 0.3


async def test_an_eviction_a_full_budget_blocks_goes_once_a_replacement_gives_it_room(ok: Setup, quick: None) -> None:
    """During a drain the budget allows none while the replacements start. Before, such an eviction was let through
    at once with its servers in rotation, and admitted unheld if a replacement turned Ready in between."""
    ok.members("a")
    ok.budget("pdb-web", 0, "a")
    review = asyncio.create_task(ok.review(evict("a"), seconds=5))
    await asyncio.sleep(0.5)
    assert not review.done() and leaving(ok) == set() and waits(ok) == 1
    ok.budget("pdb-web", 1, "a")  # a replacement turned Ready
    await ok.accepted(IPS["a"])
    assert await review == "confirmed" and leaving(ok) == {"a"}


async def test_a_delete_is_no_business_of_the_budgets(ok: Setup) -> None:
    ok.members("a", "b")
    ok.budget("pdb-web", 0, "a", "b")
    assert await ok.review(evict("a"), seconds=0.5) == "pdb-blocked"
    assert ok.rec.sent() == [] and ok.budget_reads == 1, "a refused eviction's servers stay"
    hold = asyncio.create_task(ok.review(delete("b", "uid-b"), seconds=5))
    await ok.accepted("10.0.0.2")
    assert await hold == "confirmed" and ok.budget_reads == 1


async def test_a_hold_that_fails_after_its_removal_started_still_expects_the_deletion(
    ok: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Let through errored, the deletion may still be refused: its removal must be undone then."""
    ok.members("a")
    expected: list[str] = []
    monkeypatch.setattr(ok.rec, "expect_deletion", lambda _ns, uid: expected.append(uid))

    async def failing_wait(*_args: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(ok.gate, "_until_out", failing_wait)
    assert await ok.review(delete("a", "uid-a"), seconds=5) == "error"
    assert leaving(ok) == {"a"} and expected == ["uid-a"]


def test_every_let_through_is_exposure() -> None:
    metrics = Metrics()
    server = Server("Ip", "10.0.0.1", 8080)
    started = now()
    removals = [
        Removal("deletion-gate", started, held_out=True),  # held until out: observed at 0 by the gate, not here
        Removal("deletion-gate", started, holds=1),  # still held as the job ends: the gate confirms it next
        Removal("deletion-gate", started, exposed_since=started),  # let through by the gate: timed out, too many
        Removal(
            "deletion-gate", started, deletion_started=started
        ),  # no leader answered, a takeover: the deletion as the watches saw
        Removal("deletion-gate", started),  # the same, the deletion never seen: from the decision
        Removal("pod-terminating", started, deletion_started=started, gated=True),  # the webhook was down
        Removal("pod-terminating", started, deletion_started=started),  # no gate at all
    ]
    observe_exposure(metrics, [Entry(server, removal=r) for r in removals])
    count = metrics.registry.get_sample_value
    assert count("albm_exposure_seconds_count", {"gate": "true"}) == 4.0
    assert count("albm_exposure_seconds_count", {"gate": "false"}) == 1.0


def successor_of(setup: Setup) -> RecordingReconciler:
    """The next leader: a reconciler that loads the resources from the status this one wrote."""
    [state] = setup.rec.resources.values()
    body = {**selected(deletionGate=GATED), "status": status.to_status(state, setup.rec.ledger(GROUP))}
    successor = RecordingReconciler(setup.view, RecordingKube())
    successor.start(body, repair=True)
    return successor


async def taken_over_mid_hold(setup: Setup) -> RecordingReconciler:
    """Member "a"'s deletion is held and its removal accepted when the leader stops: the review is handed over, and
    the successor loads what status recorded."""
    setup.members("a")
    hold = asyncio.create_task(setup.gate.review(Review.parse(delete("a", "uid-a")), time.monotonic() + 20))
    await setup.accepted("10.0.0.1")
    setup.rec.stopped = True
    assert (await hold).outcome == HANDED_OVER
    return successor_of(setup)


async def test_a_review_handed_over_and_never_answered_is_exposure_from_the_deletion(ok: Setup) -> None:
    """The leader stops mid-hold and the new one never gets the review (no leader answered in time, the API
    server's timeout): the deletion went ahead unconfirmed, and the successor counts it from its start."""
    ok.pages.answer = listed(("10.0.0.1", "Available"))
    successor = await taken_over_mid_hold(ok)
    [entry] = successor.ledger(GROUP).pending()
    assert entry.removal is not None and entry.removal.trigger == "deletion-gate" and entry.removal.gated
    deleting = pod("a", ip="10.0.0.1", deleting=True)
    ok.view.put(deleting)
    successor.pod_changed(deleting, deleted=False)
    assert entry.removal.deletion_started == deleting.deletion_started, "the removal learns when the deletion began"
    metrics = Metrics()
    observe_exposure(metrics, [entry])
    assert metrics.registry.get_sample_value("albm_exposure_seconds_count", {"gate": "true"}) == 1.0


async def test_a_successor_does_not_call_off_a_removal_the_gate_decided(ok: Setup) -> None:
    """The pod whose deletion the old leader held is still live (its deletion waits on the gate): the successor
    must not take it for a live holder of its server and call the removal off at its last check."""
    ok.members("a")
    hold = asyncio.create_task(ok.gate.review(Review.parse(delete("a", "uid-a")), time.monotonic() + 20))
    await ok.decided("10.0.0.1")
    ok.rec.stopped = True
    assert (await hold).outcome == HANDED_OVER
    successor = successor_of(ok)
    assert successor.directory.holders(successor.ledger(GROUP)) == {}, "the held pod holds nothing"
    assert "uid-a" in successor.gated


async def test_a_new_leader_that_finished_the_removal_before_its_hold_looked_confirms_it(ok: Setup) -> None:
    """The old leader stops mid-hold; the new one loads the removal from status and its pipeline finds it done (the
    job had ended) before the review, handed over, is held again. Before: "no server of this pod to wait for", let
    through unconfirmed, although the server was out."""
    successor = await taken_over_mid_hold(ok)
    [entry] = successor.ledger(GROUP).pending()
    outcomes.finish_removals([entry], successor.ledger(GROUP), list(successor.resources.values()))
    assert not successor.ledger(GROUP).entries
    pages = Pages(listed())  # the group without the server
    metrics = Metrics()

    async def budgets(_ns: str) -> list[Budget]:
        return []

    gate = Gate(successor, ok.view, lambda _r: cast(AlbClient, pages), metrics, budgets)
    verdict = await gate.review(Review.parse(delete("a", "uid-a")), time.monotonic() + 5)
    assert verdict.outcome == "confirmed", verdict
    assert pages.calls, "confirmed by a listing"


async def test_the_gates_word_survives_a_takeover() -> None:
    """A let-through (from when) and a hold until out (not exposed) are in status for the next leader."""
    setup = Setup(Pages(listed(("10.0.0.1", "Available"), ("10.0.0.2", "Draining"))))
    setup.members("a", "b")
    holds = [asyncio.create_task(setup.review(delete(n, f"uid-{n}"), seconds=0.8)) for n in ("a", "b")]
    await setup.accepted("10.0.0.1", "10.0.0.2")
    assert await asyncio.gather(*holds) == ["timed-out", "confirmed"]
    successor = successor_of(setup)
    exposed, held = (successor.ledger(GROUP).entries[Server("Ip", ip, 8080)].removal for ip in ("10.0.0.1", "10.0.0.2"))
    assert exposed is not None and exposed.exposed_since is not None and not exposed.held_out
    assert held is not None and held.held_out and held.exposed_since is None
    metrics = Metrics()
    observe_exposure(metrics, list(successor.ledger(GROUP).pending()))
    assert metrics.registry.get_sample_value("albm_exposure_seconds_count", {"gate": "true"}) == 1.0


async def test_removals_of_a_gated_resource_are_marked_gated(ok: Setup) -> None:
    ok.members("a")
    ok.rec.pod_changed(pod("a", ip="10.0.0.1", deleting=True), deleted=False)
    entry = ok.entry("10.0.0.1")
    assert entry is not None and entry.removal is not None and entry.removal.gated


# -- bounded, on their own clock --------------------------------------------------------------------------------


def test_the_listing_cache_forgets_groups_on_its_own_clock() -> None:
    clock = [0.0]
    listings = GroupListings(lambda _k, _i: asyncio.sleep(0, ([], True)), clock=lambda: clock[0])
    a = Server("Ip", "10.0.0.1", 8080)
    asyncio.run(listings.verdict(GROUP, a, {a}, since=0.0))
    assert len(listings) == 1
    clock[0] = 10.0
    listings.prune()
    assert len(listings) == 1
    clock[0] = 100.0
    listings.prune()
    assert len(listings) == 0


async def test_the_sweeper_prunes_the_gated_set_and_the_cache_without_any_call(
    ok: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    swept: list[str] = []
    monkeypatch.setattr(review_module, "SWEEP_SECONDS", 0.01)
    monkeypatch.setattr(ok.rec.gated, "prune", lambda: swept.append("gated"))
    monkeypatch.setattr(ok.gate.listings, "prune", lambda: swept.append("listings"))
    ok.gate.start()
    await asyncio.sleep(0.1)
    await ok.gate.close()
    assert swept.count("gated") >= 2 and swept.count("listings") >= 2


async def test_a_listing_read_before_the_removal_was_accepted_proves_nothing_of_it() -> None:
    """An IP reused by a new pod: its server was absent from the group a moment ago (the old pod's removal) and
    was added again since. A listing read then, still young, must not confirm the new pod's deletion (found by the
    suite: a replacement's deletion let through while its server showed Removing)."""
    pages = Pages(listed())  # the group as it was before the new pod's server was added
    setup = Setup(pages)
    setup.members("a")
    await setup.gate.listings.verdict(GROUP, Server("Ip", "10.0.0.1", 8080), [], since=0.0)
    pages.answer = listed(("10.0.0.1", "Removing"))  # added again; now being removed
    hold = asyncio.create_task(setup.review(delete("a", "uid-a"), seconds=5))
    await setup.accepted("10.0.0.1")
    await asyncio.sleep(0.3)  # within the old listing's max age
    assert not hold.done(), "confirmed from a listing read before its removal was accepted"
    pages.answer = listed()
    assert await hold == "confirmed"
