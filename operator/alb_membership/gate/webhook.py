"""The deletion gate's HTTPS endpoint, served by every replica.

The API server may call any replica (the webhook's Service selects them all). The leader answers itself; a
standby answers at once for pods no gated resource picks (its own watches tell it), and forwards the others to
the leader, whose address the leader writes on the Lease. A standby never lets a gated deletion through without
the leader's word, except when no leader answers within the resource's maxWaitSeconds: the gate delays, it never
blocks for good.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from alb_membership.cluster.store import ClusterStore
from alb_membership.gate.review import Gate, Review, answer, hold_for
from alb_membership.gate.tls import Bundle, client_context
from alb_membership.metrics import Metrics

log = logging.getLogger(__name__)
PATH = "/validate-pod-deletion"
FORWARDED = "X-Albm-Forwarded"  # on a review a standby passes to the leader: never passed on again


class Webhook:
    def __init__(
        self,
        gate: Gate,
        store: ClusterStore,
        metrics: Metrics,
        eni_annotation: str,
        leading: Callable[[], bool],
        leader_url: Callable[[], Awaitable[str | None]],
        session: aiohttp.ClientSession,
        forward: tuple[ssl.SSLContext, str],
    ) -> None:
        self._gate = gate
        self._store = store
        self._metrics = metrics
        self._eni_annotation = eni_annotation
        self._leading = leading
        self._leader_url = leader_url
        self._session = session
        # The leader is reached at its pod IP; its certificate is checked against the Service's name it was made for.
        self._forward_ssl, self._forward_name = forward

    def trust(self, bundle: Bundle) -> None:
        """The CA to check the leader's certificate against, when forwarding."""
        self._forward_ssl = client_context(bundle)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post(PATH, self._review)])
        return app

    async def _review(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        if self._leading():
            return web.json_response(await self._gate.review(body))
        if request.headers.get(FORWARDED):
            # Sent here as to the leader, and this replica is not (any more): the sender tries again; never passed on.
            return web.Response(status=503, text="not the leader")
        review = Review.parse(body, self._eni_annotation)
        hold = None if review.dry_run else hold_for(self._store, review)
        if hold is None:
            self._metrics.gate_outcomes.labels("not-a-member").inc()
            return web.json_response(answer(review.uid))
        return web.json_response(await self._forward(body, review, hold.seconds))

    async def _forward(self, body: dict[str, Any], review: Review, wait: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            url = await self._leader_url()
            if url:
                try:
                    left = max(0.1, deadline - time.monotonic())
                    timeout = aiohttp.ClientTimeout(total=left, sock_connect=min(1.0, left))
                    async with self._session.post(
                        f"{url}{PATH}",
                        json=body,
                        headers={FORWARDED: "1"},
                        ssl=self._forward_ssl,
                        server_hostname=self._forward_name,
                        timeout=timeout,
                    ) as resp:
                        resp.raise_for_status()
                        answered: dict[str, Any] = await resp.json()
                        return answered
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning(
                        "could not ask the leader at %s about pod %s/%s: %s",
                        url,
                        review.namespace,
                        review.pod_name,
                        exc,
                    )
            await asyncio.sleep(0.2)
        self._metrics.gate_outcomes.labels("no-leader").inc()
        return answer(
            review.uid, "alb-membership-operator: no leader answered in time; deletion let through unconfirmed"
        )
