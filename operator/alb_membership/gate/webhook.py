"""The deletion gate's HTTPS endpoint, served by every replica.

Who is heard (PRODUCT.md 3.14): only a POST to ``/validate-pod-deletion/<token>``, the token this install keeps in
its TLS Secret and writes into the webhook configuration (gate/tls.py), compared in constant time. Any other path,
the old ``/validate-pod-deletion`` included, is answered 404 and counted (``albm_webhook_refused_total``) before
anything is read. With ``deletionGate.clientCA`` the TLS layer also requires the API server's client certificate.

The API server may call any replica (the webhook's Service selects them all). The leader answers itself; a
standby answers at once for pods no gated resource picks (its own watches tell it), and forwards the others to
the leader, on the same path, whose address the leader writes on the Lease. While it forwards, a standby looks every
0.25 s whether it leads now or the Lease names another leader, and if so drops the ask (a leader on a lost node
never answers nor refuses) and answers itself or asks the new one; it re-reads the Lease after every failure. So a
takeover mid-hold is answered by the new leader, not after ``maxWaitSeconds``; a leader that stops leading mid-hold
hands its reviews to the new leader the same way. A standby never lets a gated deletion through without the leader's
word, except when no leader answers within the resource's maxWaitSeconds: the gate delays, it never blocks for good.
Every wait (the Lease, the leader, a PodDisruptionBudget read) is bounded by the review's time left; at most
MAX_FORWARDS reviews are forwarded at once, and a failure on the standby is answered and counted (``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from alb_membership.gate.review import Gate, Review, answer, hold_for, pod_of
from alb_membership.gate.tls import PREVIOUS_TOKEN_SECONDS, REVIEW_PATH, Bundle, client_context, review_path
from alb_membership.metrics import Metrics
from alb_membership.model.view import LiveView

log = logging.getLogger(__name__)
# On a review a standby passes to the leader: the seconds the standby still waits for it. Never passed on again.
FORWARDED = "X-Albm-Forwarded"
FORWARD_MARGIN_SECONDS = 0.5  # a forwarded review is answered this long before its standby stops waiting
RETRY_SECONDS = 0.2
POLL_SECONDS = 0.25  # while a forward is awaited: whether this replica leads now, or the Lease names another leader
REREAD_SECONDS = 2.0  # a review waits at most this long for the Secret to be read again
MAX_FORWARDS = 500  # reviews a standby forwards at once (as MAX_HOLDS on the leader); more are let through
MAX_BODY_BYTES = 4 * 1024 * 1024  # an AdmissionReview with a pod as large as etcd takes (1.5 MiB) as oldObject


class LeaderLookup:
    """Where the leader's webhook is, read from the Lease: shared by every review being forwarded, re-read at most
    every ``min_interval`` however many reviews ask (a takeover with hundreds of reviews in flight costs a few
    GETs a second, not hundreds)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[str | None]],
        min_interval: float = 0.25,
        max_age: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._min_interval = min_interval
        self._max_age = max_age
        self._clock = clock
        self._value: str | None = None
        self._read_at = -1e9
        self._lock = asyncio.Lock()

    async def url(self, refresh: bool = False) -> str | None:
        """The leader's URL as last read; read again when older than ``max_age``, when none is known, or when
        ``refresh`` (the last one failed or said it no longer leads) and the last read is older than
        ``min_interval``."""
        asked = self._clock()
        age = asked - self._read_at
        if age < self._min_interval or (age < self._max_age and self._value and not refresh):
            return self._value
        async with self._lock:
            if self._read_at < asked:  # nobody read it while this one waited for the lock
                try:
                    self._value = await self._read()
                except Exception as exc:  # the API server restarting: the forwarding loop tries again
                    log.warning("could not read the lease (%s: %s)", type(exc).__name__, exc)
                    self._value = None
                self._read_at = self._clock()
        return self._value


class Webhook:
    def __init__(
        self,
        gate: Gate,
        store: LiveView,
        metrics: Metrics,
        leading: Callable[[], bool],
        leaders: LeaderLookup | None,
        session: aiohttp.ClientSession,
        bundle: Bundle,
        forward_name: str,
        mtls: bool = False,
        clock: Callable[[], float] = time.monotonic,
        unknown_token: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``leaders``: None without leader election (no other replica could answer). ``unknown_token``: awaited
        (at most REREAD_SECONDS) when a review names a token-shaped path that is not one this replica hears, or the
        leader answers 404: it reads the Secret again, rate-limited, and calls ``use`` if it changed."""
        self._gate = gate
        self._store = store
        self._metrics = metrics
        self._leading = leading
        self._leaders = leaders
        self._session = session
        self._mtls = mtls
        self._clock = clock
        self._unknown_token = unknown_token
        self._wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
        # The leader is reached at its pod IP; its certificate is checked against the Service's name it was made for.
        self._forward_name = forward_name
        self._bundle = bundle
        self._retired: dict[str, dt.datetime] = {}  # tokens heard before the current one -> until when
        self._forward_ssl: ssl.SSLContext = client_context(bundle, mtls)
        self.forwarding = 0  # reviews being forwarded now
        # The tasks answering reviews now: a stopping replica lets them finish (run.py keeps kopf from cancelling
        # them with the tasks it spawned), so that what it held is handed over, not dropped.
        self.tasks: set[asyncio.Task[Any]] = set()

    def use(self, bundle: Bundle) -> None:
        """The token to hear and to forward with, and the CA (and, under mTLS, the client certificate) for
        forwarding: followed when the Secret changes. The token heard until now is heard PREVIOUS_TOKEN_SECONDS
        more (the configuration may still name it: the API server and the leader follow in their own time), also
        when the Secret does not say so (it was made again, or rotated by a replica that never heard it)."""
        now = self._wall()
        old = self._bundle.path_token
        if old and old not in bundle.tokens(now):
            self._retired[old] = now + dt.timedelta(seconds=PREVIOUS_TOKEN_SECONDS)
        self._retired = {t: until for t, until in self._retired.items() if until > now and t != bundle.path_token}
        self._bundle = bundle
        self._forward_ssl = client_context(bundle, self._mtls)

    @property
    def path(self) -> str:
        """Where a review is forwarded: the current token's path."""
        return review_path(self._bundle.path_token)

    def _hears(self, token: bytes) -> bool:
        """The current token, or the one before a rotation during its grace; compared in constant time."""
        now = self._wall()
        heard = False
        for known in [*self._bundle.tokens(now), *(t for t, until in self._retired.items() if until > now)]:
            heard |= hmac.compare_digest(token, known.encode())
        return heard

    async def _reread(self) -> None:
        if self._unknown_token is None:
            return
        try:
            async with asyncio.timeout(REREAD_SECONDS):
                await self._unknown_token()
        except Exception as exc:  # the Secret could not be read: the review is refused as it would have been
            log.warning("could not read the webhook's Secret again (%s)", type(exc).__name__)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes([web.post(REVIEW_PATH + "/{token}", self._review), web.route("*", "/{tail:.*}", self._refused)])
        return app

    async def _refused(self, _: web.Request) -> web.Response:
        """Not the API server (nor a replica): nothing read, nothing done."""
        self._metrics.webhook_refused.labels("path").inc()
        return web.Response(status=404, text="not found")

    async def _review(self, request: web.Request) -> web.Response:
        # The handler's task and its connection's (which would close the connection if cancelled).
        tasks = {t for t in (asyncio.current_task(), request.task) if t is not None}
        self.tasks |= tasks
        try:
            return await self._heard(request)
        finally:
            self.tasks -= tasks

    async def _heard(self, request: web.Request) -> web.Response:
        token = request.match_info["token"].encode()
        if not self._hears(token):
            if len(token) != len(self._bundle.path_token):
                return await self._refused(request)
            # Shaped like a token: rotated by the other replica, perhaps. The Secret is read again (rate-limited)
            # before the answer, which a 404 would make an ungated deletion.
            await self._reread()
            if not self._hears(token):
                return await self._refused(request)
        started = self._clock()
        try:
            body: Any = await request.json()
        except ValueError:
            self._metrics.webhook_refused.labels("body").inc()
            return web.Response(status=400, text="not an AdmissionReview")
        review = Review.parse(body)
        forwarded = _seconds(request.headers.get(FORWARDED))
        if self._leading():
            deadline = None if forwarded is None else started + max(0.0, forwarded - FORWARD_MARGIN_SECONDS)
            verdict = await self._gate.review(review, deadline)
            if not verdict.handed_over:
                return web.json_response(answer(review.uid, verdict.warning))
        if forwarded is not None:
            # Sent here as to the leader, and this replica is not (any more): the sender asks the new one.
            return web.Response(status=503, text="not the leader")
        try:
            return web.json_response(await self._standing_by(body, review, started))
        except Exception as exc:  # as the leader's gate does: answered, counted, never the API server's silent Ignore
            log.error(
                "deletion of pod %s/%s let through: the standby failed (%s)",
                review.namespace,
                review.pod_name,
                type(exc).__name__,
            )
            self._metrics.gate_outcomes.labels("error").inc()
            return web.json_response(
                answer(review.uid, f"alb-membership-operator: the deletion gate failed ({type(exc).__name__})")
            )

    async def _standing_by(self, body: Any, review: Review, started: float) -> dict[str, Any]:
        """A review this replica does not answer as the leader: non-members at once, members by the leader."""
        pod = None if review.dry_run else pod_of(self._store, review)
        hold = hold_for(self._store, pod) if pod is not None else None
        if hold is None:
            outcome = "dry-run" if review.dry_run else "unknown-pod" if pod is None else "not-a-member"
            self._metrics.gate_outcomes.labels(outcome).inc()
            return answer(review.uid)
        if self.forwarding >= MAX_FORWARDS:
            self._metrics.gate_outcomes.labels("too-many").inc()
            return answer(
                review.uid, "alb-membership-operator: too many deletions held at once; let through unconfirmed"
            )
        self.forwarding += 1
        try:
            return await self._forward(body, review, started + hold.seconds)
        finally:
            self.forwarding -= 1

    async def _forward(self, body: Any, review: Review, deadline: float) -> dict[str, Any]:
        refresh = False
        while (left := deadline - self._clock()) > 0:
            if self._leading():  # this replica took over meanwhile: it answers itself
                verdict = await self._gate.review(review, deadline)
                if not verdict.handed_over:
                    return answer(review.uid, verdict.warning)
            elif self._leaders is None:
                break  # no leader election: no other replica to ask
            else:
                try:
                    async with asyncio.timeout(left):  # no task of its own (see tasks)
                        url = await self._leaders.url(refresh)
                except TimeoutError:
                    break
                refresh = True  # unless the leader answers below, the next try reads the Lease again
                if url:
                    answered = await self._asking(url, body, review, deadline)
                    if answered is not None:
                        return answered
            await asyncio.sleep(min(RETRY_SECONDS, max(0.0, deadline - self._clock())))
        self._metrics.gate_outcomes.labels("no-leader").inc()
        return answer(
            review.uid, "alb-membership-operator: no leader answered in time; deletion let through unconfirmed"
        )

    async def _asking(self, url: str, body: Any, review: Review, deadline: float) -> dict[str, Any] | None:
        """The answer of the leader at ``url``, unless, while it is awaited, this replica starts leading or the
        Lease names another leader: then the ask is cancelled and None returned at once, for the caller to ask
        again. A leader whose node is lost or cut off never answers nor refuses: without this the standby would
        wait for it until the hold's end, even after it took the Lease itself."""
        assert self._leaders is not None
        ask = asyncio.ensure_future(self._ask(url, body, review, deadline - self._clock()))
        self.tasks.add(ask)
        ask.add_done_callback(self.tasks.discard)
        try:
            while True:
                await asyncio.wait({ask}, timeout=max(0.0, min(POLL_SECONDS, deadline - self._clock())))
                if ask.done():
                    return ask.result()
                if self._leading() or self._clock() >= deadline:
                    return None
                try:
                    async with asyncio.timeout(POLL_SECONDS):
                        named = await self._leaders.url(refresh=True)
                except TimeoutError:
                    continue
                if named is not None and named != url:
                    log.info(
                        "the Lease names another leader: asking it about pod %s/%s", review.namespace, review.pod_name
                    )
                    return None
        finally:
            if not ask.done():
                ask.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ask

    async def _ask(self, url: str, body: Any, review: Review, left: float) -> dict[str, Any] | None:
        """The leader's answer, or None when it did not give one (unreachable, no longer the leader, or another
        token: then the Secret is read again, as for a review on a token this replica does not know). Nothing
        logged here names the path: it holds the token."""
        host = urlsplit(url).netloc or "?"
        timeout = aiohttp.ClientTimeout(total=left, sock_connect=min(1.0, left))
        try:
            async with self._session.post(
                f"{url}{self.path}",
                json=body,
                headers={FORWARDED: f"{left:.3f}"},
                ssl=self._forward_ssl,
                server_hostname=self._forward_name,
                timeout=timeout,
            ) as resp:
                if resp.status == 200:
                    answered: dict[str, Any] = await resp.json()
                    return answered
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "could not ask the leader at %s about pod %s/%s (%s)",
                host,
                review.namespace,
                review.pod_name,
                _why(exc),
            )
            return None
        if status != 503:  # 503: it no longer leads, the Lease is read again
            log.warning(
                "the leader at %s answered %d about pod %s/%s; asking again",
                host,
                status,
                review.namespace,
                review.pod_name,
            )
        if status == 404:
            # Not this replica's token there (rotated, a Secret made again, an older version): read ours again,
            # then ask again.
            await self._reread()
        return None


def _why(exc: BaseException) -> str:
    """What went wrong, without the exception's text: aiohttp's errors print the request's URL, path token and all."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{type(exc).__name__}: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__} {exc.status}"
    return type(exc).__name__


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(30.0, max(0.0, float(value)))
    except ValueError:
        return 0.0
