"""The webhook's HTTP side (issue 17): only the path with this install's token is heard, everything else is a counted
404; a standby forwards on that same path and answers itself as soon as it leads; a leader that stops mid-hold asks
the new leader; the Lease is read once for many reviews."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from alb_membership.gate import webhook as webhook_module
from alb_membership.gate.pki import make_ca, make_serving
from alb_membership.gate.review import HANDED_OVER, Gate, Review, Verdict
from alb_membership.gate.tls import Bundle, new_token
from alb_membership.gate.webhook import FORWARDED, LeaderLookup, Webhook
from alb_membership.metrics import Metrics
from tests.unit.fakes import View, pod, selected
from tests.unit.test_gate import delete

TOKEN = new_token()


def bundle(token: str = TOKEN) -> Bundle:
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = make_ca("test CA", 1, now)
    cert, key = make_serving(ca_cert, ca_key, ["127.0.0.1"], 1, now)
    return Bundle(ca_cert, ca_key, cert, key, token)


class FakeGate:
    def __init__(self, verdict: Callable[[], Verdict] = lambda: Verdict("confirmed", "held")) -> None:
        self.verdict = verdict
        self.reviews: list[tuple[Review, float | None]] = []

    async def review(self, review: Review, deadline: float | None = None) -> Verdict:
        self.reviews.append((review, deadline))
        await asyncio.sleep(0)
        return self.verdict()


def gated_view() -> View:
    view = View()
    view.pod_list = [pod("a")]
    view.bodies = [selected(deletionGate={"enabled": True, "maxWaitSeconds": 3})]
    return view


class Replica:
    def __init__(
        self,
        gate: FakeGate,
        leading: Callable[[], bool],
        leader: Callable[[], str | None] | None,
        token: str = TOKEN,
    ) -> None:
        """``leader``: None without leader election."""
        self.gate = gate
        self.metrics = Metrics()
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.session = aiohttp.ClientSession()
        self.rechecks = 0

        self.on_recheck: Callable[[], None] = lambda: None  # what reading the Secret again finds

        async def recheck() -> None:
            self.rechecks += 1
            self.on_recheck()

        async def read() -> str | None:
            return leader() if leader is not None else None

        self.webhook = Webhook(
            cast(Gate, gate),
            gated_view(),
            self.metrics,
            leading,
            LeaderLookup(read, min_interval=0.05) if leader is not None else None,
            self.session,
            bundle(token),
            "127.0.0.1",
            unknown_token=recheck,
        )

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append((request.path, dict(request.headers)))
            return cast(web.StreamResponse, await handler(request))

        app = self.webhook.app()
        app.middlewares.append(record)
        self.client = TestClient(TestServer(app))

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def refused(self, reason: str = "path") -> float:
        return self.metrics.registry.get_sample_value("albm_webhook_refused_total", {"reason": reason}) or 0.0

    async def close(self) -> None:
        await self.client.close()
        await self.session.close()


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        await r.close()


async def started(replicas: list[Replica], *args: Any) -> Replica:
    replica = Replica(*args)
    await replica.client.server.start_server(access_log=None)  # as run.py serves it: no access log
    await replica.client.start_server()
    replicas.append(replica)
    return replica


async def test_only_the_review_path_with_this_installs_token_is_heard(replicas: list[Replica]) -> None:
    leader = await started(replicas, FakeGate(), lambda: True, lambda: None)
    body = delete("a", "uid-a")
    for method, path in [
        ("POST", "/validate-pod-deletion"),  # the path before issue 17
        ("POST", "/validate-pod-deletion/" + new_token()),
        ("POST", "/validate-pod-deletion/" + TOKEN[:-1]),
        ("POST", "/validate-pod-deletion/" + TOKEN + "/x"),
        ("GET", "/validate-pod-deletion/" + TOKEN),
        ("POST", "/"),
    ]:
        resp = await leader.client.request(method, path, json=body)
        assert resp.status == 404, (method, path)
    assert leader.refused() == 6 and leader.gate.reviews == [], "nothing read, nothing done"
    assert leader.rechecks == 1, "a token of the right shape has the Secret read again (the token may have rotated)"
    resp = await leader.client.post("/validate-pod-deletion/" + TOKEN, data=b"not json")
    assert resp.status == 400 and leader.refused("body") == 1
    resp = await leader.client.post("/validate-pod-deletion/" + TOKEN, json=body)
    assert resp.status == 200 and (await resp.json())["response"] == {
        "uid": "review-a",
        "allowed": True,
        "warnings": ["held"],
    }


async def test_a_standby_forwards_on_the_same_path_with_its_deadline(replicas: list[Replica]) -> None:
    leader = await started(replicas, FakeGate(), lambda: True, lambda: None)
    standby = await started(replicas, FakeGate(), lambda: False, lambda: leader.url)
    resp = await standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert (await resp.json())["response"]["warnings"] == ["held"]
    [(path, headers)] = leader.seen
    assert path == "/validate-pod-deletion/" + TOKEN
    assert 2.0 < float(headers[FORWARDED]) <= 3.0, "the leader is told how long the standby waits (maxWaitSeconds)"
    [(_, deadline)] = leader.gate.reviews
    assert deadline is not None and deadline - time.monotonic() < 3.0 - 0.4, "and answers before that"
    assert standby.gate.reviews == []


async def test_a_standby_that_takes_over_mid_forward_answers_itself(replicas: list[Replica]) -> None:
    leads = False
    standby = await started(replicas, FakeGate(), lambda: leads, lambda: "https://127.0.0.1:9")  # a dead leader
    review = asyncio.create_task(standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a")))
    await asyncio.sleep(0.5)
    assert not review.done()
    leads = True
    took_over = time.monotonic()
    resp = await review
    assert (await resp.json())["response"]["warnings"] == ["held"], "answered by the new leader, not no-leader"
    assert time.monotonic() - took_over < 0.5
    assert standby.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": "no-leader"}) == 0


async def test_a_leader_that_stops_mid_hold_asks_the_new_leader(replicas: list[Replica]) -> None:
    new = await started(replicas, FakeGate(), lambda: True, lambda: None)
    stopped = False

    def stop() -> Verdict:  # as Runtime.stop_work does mid-hold: this replica no longer leads
        nonlocal stopped
        stopped = True
        return Verdict(HANDED_OVER)

    old = await started(replicas, FakeGate(stop), lambda: not stopped, lambda: new.url)
    resp = await old.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert (await resp.json())["response"]["warnings"] == ["held"]
    assert len(new.gate.reviews) == 1
    # Forwarded to it by a standby, it says so, and the standby asks again.
    resp = await old.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"), headers={FORWARDED: "3"})
    assert resp.status == 503


async def test_with_no_leader_the_deletion_goes_through_after_max_wait(replicas: list[Replica]) -> None:
    standby = await started(replicas, FakeGate(), lambda: False, lambda: None)
    began = time.monotonic()
    resp = await standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert "no leader" in (await resp.json())["response"]["warnings"][0]
    assert 2.8 < time.monotonic() - began < 4.0
    assert standby.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": "no-leader"}) == 1


async def test_a_standby_answers_forged_and_non_member_reviews_itself(replicas: list[Replica]) -> None:
    standby = await started(replicas, FakeGate(), lambda: False, lambda: "https://127.0.0.1:9")
    for body in (delete("a", "uid-random"), delete("a", None)):
        began = time.monotonic()
        resp = await standby.client.post("/validate-pod-deletion/" + TOKEN, json=body)
        assert (await resp.json())["response"] == {"uid": "review-a", "allowed": True}
        assert time.monotonic() - began < 0.5
    value = standby.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": "unknown-pod"})
    assert value == 2


async def test_the_lease_is_read_once_for_many_reviews() -> None:
    reads = 0

    async def read() -> str | None:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        return "https://10.0.0.2:9443"

    leaders = LeaderLookup(read, min_interval=0.25, max_age=2.0)
    urls = await asyncio.gather(*(leaders.url(refresh=True) for _ in range(100)))
    assert set(urls) == {"https://10.0.0.2:9443"} and reads == 1
    assert await leaders.url(refresh=True) and reads == 1, "not again within min_interval"
    await asyncio.sleep(0.3)
    await leaders.url()
    assert reads == 1, "a known leader is reused for max_age"
    await leaders.url(refresh=True)
    assert reads == 2, "after a failure it is read again"


async def test_without_leader_election_a_stopping_replica_lets_through_at_once(replicas: list[Replica]) -> None:
    alone = await started(replicas, FakeGate(), lambda: False, None)
    began = time.monotonic()
    resp = await alone.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert "no leader" in (await resp.json())["response"]["warnings"][0]
    assert time.monotonic() - began < 0.5, "no other replica to ask: no point in waiting"


async def test_the_path_token_is_never_logged_whatever_the_leader_answers(
    replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    """The replicas disagree on the token (rotated, a Secret made again, an upgrade from 0.1): the leader answers
    404, or anything else but 200; aiohttp's errors print the request's URL, token and all."""
    caplog.set_level(logging.DEBUG)
    other = await started(replicas, FakeGate(), lambda: True, lambda: None, new_token())

    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=500)

    failing = web.Application()
    failing.router.add_route("*", "/{tail:.*}", fail)
    broken = TestClient(TestServer(failing))
    await broken.server.start_server(access_log=None)
    await broken.start_server()
    try:
        for leader_url in (other.url, str(broken.make_url("")).rstrip("/")):
            standby = await started(replicas, FakeGate(), lambda: False, lambda u=leader_url: u)
            resp = await standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
            assert "no leader" in (await resp.json())["response"]["warnings"][0]
            assert TOKEN not in caplog.text
            assert "answered" in caplog.text, "the standby did say what went wrong"
        assert replicas[1].rechecks >= 1, "a 404 from the leader has the Secret read again, like a review's"
    finally:
        await broken.close()


@pytest.fixture
async def hung() -> AsyncIterator[str]:
    """A leader whose node was lost or cut off: connections are taken, nothing is ever answered."""
    held: list[asyncio.StreamWriter] = []

    async def take(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(take, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_standby_takes_over_while_its_forward_hangs(replicas: list[Replica], hung: str) -> None:
    leads = False
    standby = await started(replicas, FakeGate(), lambda: leads, lambda: hung)
    review = asyncio.create_task(standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a")))
    await asyncio.sleep(0.5)
    assert not review.done()
    leads = True  # the Lease expired and this replica took it: the hung leader is no longer asked
    took_over = time.monotonic()
    resp = await review
    assert (await resp.json())["response"]["warnings"] == ["held"], "answered by this replica, now the leader"
    assert time.monotonic() - took_over < 0.6
    assert standby.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": "no-leader"}) == 0


async def test_a_forward_to_a_hung_leader_goes_to_the_one_the_lease_names_next(
    replicas: list[Replica], hung: str
) -> None:
    new = await started(replicas, FakeGate(), lambda: True, lambda: None)
    named = hung
    standby = await started(replicas, FakeGate(), lambda: False, lambda: named)
    review = asyncio.create_task(standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a")))
    await asyncio.sleep(0.5)
    named = new.url  # a third replica took the Lease
    changed = time.monotonic()
    resp = await review
    assert (await resp.json())["response"]["warnings"] == ["held"] and len(new.gate.reviews) == 1
    assert time.monotonic() - changed < 0.8


async def test_a_standbys_forwards_are_bounded(
    replicas: list[Replica], hung: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_module, "MAX_FORWARDS", 1)
    standby = await started(replicas, FakeGate(), lambda: False, lambda: hung)
    first = asyncio.create_task(standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a")))
    await asyncio.sleep(0.3)
    began = time.monotonic()
    resp = await standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert "too many" in (await resp.json())["response"]["warnings"][0] and time.monotonic() - began < 0.5
    assert standby.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": "too-many"}) == 1
    first.cancel()


async def test_a_failure_on_the_standby_is_answered_and_counted(replicas: list[Replica]) -> None:
    standby = await started(replicas, FakeGate(), lambda: False, lambda: "https://127.0.0.1:9")

    def broken() -> list[Any]:
        raise RuntimeError("the store broke")

    standby.webhook._store.memberships = broken  # type: ignore[method-assign]
    resp = await standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert resp.status == 200 and "failed (RuntimeError)" in (await resp.json())["response"]["warnings"][0]
    assert standby.metrics.registry.get_sample_value("albm_gate_outcomes_total", {"outcome": "error"}) == 1


async def test_a_lease_read_that_hangs_does_not_outlast_the_hold(replicas: list[Replica]) -> None:
    standby = await started(replicas, FakeGate(), lambda: False, lambda: None)

    async def hangs() -> str | None:
        await asyncio.Event().wait()
        return None

    standby.webhook._leaders = LeaderLookup(hangs)
    began = time.monotonic()
    resp = await asyncio.wait_for(standby.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a")), 8)
    assert "no leader" in (await resp.json())["response"]["warnings"][0]
    assert time.monotonic() - began < 4.0, "maxWaitSeconds (3 s), not forever"


async def test_a_token_shaped_miss_reads_the_secret_before_it_is_answered(replicas: list[Replica]) -> None:
    """The other replica rotated the token and the leader wrote it into the configuration: the first review on it
    is heard (before: 404, an ungated deletion, and the Secret read afterwards)."""
    rotated = new_token()
    replica = await started(replicas, FakeGate(), lambda: True, lambda: None)
    replica.on_recheck = lambda: replica.webhook.use(bundle(rotated))
    resp = await replica.client.post("/validate-pod-deletion/" + rotated, json=delete("a", "uid-a"))
    assert resp.status == 200 and replica.rechecks == 1
    resp = await replica.client.post("/validate-pod-deletion/" + TOKEN, json=delete("a", "uid-a"))
    assert resp.status == 200, "the token heard before is heard for a grace period: the configuration may name it"


async def test_the_previous_token_is_heard_only_during_its_grace(replicas: list[Replica]) -> None:
    old = new_token()
    replica = await started(replicas, FakeGate(), lambda: True, lambda: None)
    now = dt.datetime.now(dt.UTC)
    replica.webhook._bundle = replace(bundle(), previous_token=old, previous_until=now + dt.timedelta(seconds=60))
    assert (await replica.client.post("/validate-pod-deletion/" + old, json=delete("a", "uid-a"))).status == 200
    replica.webhook._bundle = replace(bundle(), previous_token=old, previous_until=now - dt.timedelta(seconds=1))
    replica.webhook._retired.clear()
    assert (await replica.client.post("/validate-pod-deletion/" + old, json=delete("a", "uid-a"))).status == 404
