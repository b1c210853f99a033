"""Leader election on a coordination.k8s.io Lease, so that of several replicas exactly one acts.

The same protocol as client-go's leaderelection: the holder renews ``renewTime`` every ``retry_seconds``;
a candidate takes the Lease once it has seen the same record, unchanged, for ``leaseDurationSeconds`` by its own
clock (as client-go's observedTime: no trust in another node's clock); every write carries the resourceVersion it
read, so two candidates cannot both win. A leader that cannot renew within ``renew_deadline_seconds`` of its
last successful renewal's start stops acting at once (``keep`` raises; run.py stops the engine in that step, hands
the reviews it holds to the next leader and exits), before any other replica can take over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

log = logging.getLogger(__name__)


ADVERTISE = "albmembership.io/webhook-url"
OBSERVE_TIMEOUT_SECONDS = 2.0


class LeadershipLost(Exception):
    """The Lease could not be renewed in time; another replica may take over now."""


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "alb-membership-operator"
    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    # A standby looks more often than the holder renews (one small GET): it takes over within this of a release
    # (a clean shutdown), and right after an expiry, which it computes from what it saw.
    standby_poll_seconds: float = 0.5


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        settings: LeaseSettings,
        identity: str,
        clock: Callable[[], dt.datetime] = _now,
        advertise: str | None = None,
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self.settings = settings
        self.identity = identity
        self._advertise = advertise  # written on the Lease while leading: where standbys forward gated reviews
        self.leader_url: str | None = None  # the holder's, as last read
        self._clock = clock
        self.is_leader = False
        self._expires: dt.datetime | None = None  # when the other holder's lease runs out, as last seen
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as last seen changed
        self._observed_at = clock()

    async def acquire(self) -> None:
        """Returns once this replica holds the Lease."""
        announced = False
        while True:
            try:
                if await self._try():
                    break
            except (ApiException, OSError, aiohttp.ClientError, TimeoutError) as exc:
                # The API server restarting or unreachable for a while: keep standing by, watches warm.
                log.warning("could not read the lease (%s: %s); trying again", type(exc).__name__, exc)
            if not announced:
                log.info(
                    "standing by: lease %s/%s is held by another replica", self.settings.namespace, self.settings.name
                )
                announced = True
            await asyncio.sleep(self._until_next_try())
        self.is_leader = True
        log.info("leading: acquired lease %s/%s as %s", self.settings.namespace, self.settings.name, self.identity)

    async def observe(self) -> None:
        """Reads who leads (``leader_url``) without competing, within OBSERVE_TIMEOUT_SECONDS (a gated review waits
        on it): for a standby's forwards, and a replica that gave the Lease up."""
        lease = await self._api.read_namespaced_lease(
            self.settings.name, self.settings.namespace, _request_timeout=OBSERVE_TIMEOUT_SECONDS
        )
        holder = lease.spec.holder_identity
        annotations = lease.metadata.annotations or {}
        self.leader_url = annotations.get(ADVERTISE) if holder not in (None, "", self.identity) else None

    def _until_next_try(self) -> float:
        wait = self.settings.standby_poll_seconds
        if self._expires is not None:
            wait = min(wait, max(0.01, (self._expires - self._clock()).total_seconds() + 0.01))
        return wait

    async def keep(self) -> None:
        """Renews forever; raises LeadershipLost when a renewal does not succeed within the deadline."""
        last = self._clock()  # the start of the last renewal that succeeded: the renewTime it wrote
        while True:
            await asyncio.sleep(self.settings.retry_seconds)
            started = self._clock()
            # No attempt may outlast the deadline counted from the last renewal, however it ends.
            left = self.settings.renew_deadline_seconds - (started - last).total_seconds()
            try:
                renewed = left > 0 and await asyncio.wait_for(self._try(), left)
            except (TimeoutError, ApiException, OSError, aiohttp.ClientError) as exc:
                log.warning("could not renew the lease: %s", exc)
                renewed = False
            if renewed:
                last = started
            elif (self._clock() - last).total_seconds() >= self.settings.renew_deadline_seconds:
                self.is_leader = False
                raise LeadershipLost(f"lease not renewed for {self.settings.renew_deadline_seconds:.0f}s")

    async def release(self) -> None:
        """Gives the Lease up on a clean shutdown, so a standby takes over without waiting for it to expire."""
        if not self.is_leader:
            return
        for _ in range(2):  # a renewal already on its way may have changed it: read again once
            try:
                lease = await self._api.read_namespaced_lease(self.settings.name, self.settings.namespace)
                if lease.spec.holder_identity == self.identity:
                    lease.spec.holder_identity = ""
                    lease.spec.lease_duration_seconds = 1
                    lease.metadata.annotations = {
                        k: v for k, v in (lease.metadata.annotations or {}).items() if k != ADVERTISE
                    }
                    await self._api.replace_namespaced_lease(self.settings.name, self.settings.namespace, lease)
                break
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("could not release the lease: %s", exc)
                    break
        self.is_leader = False

    async def _try(self) -> bool:
        now = self._clock()
        s = self.settings
        try:
            lease = await self._api.read_namespaced_lease(s.name, s.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body: dict[str, Any] = {
                "metadata": {
                    "name": s.name,
                    "namespace": s.namespace,
                    "annotations": {ADVERTISE: self._advertise} if self._advertise else {},
                },
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": s.lease_seconds,
                    "acquireTime": _micro(now),
                    "renewTime": _micro(now),
                    "leaseTransitions": 0,
                },
            }
            try:
                await self._api.create_namespaced_lease(s.namespace, body)  # type: ignore[arg-type]
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True
        spec = lease.spec
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        self.leader_url = (lease.metadata.annotations or {}).get(ADVERTISE) if held_by_other else None
        if held_by_other:
            record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
            if record != self._observed:  # renewed since last look: its lease runs from now, by this clock
                self._observed, self._observed_at = record, now
            duration = spec.lease_duration_seconds or s.lease_seconds
            expires = self._observed_at + dt.timedelta(seconds=duration)
            if now < expires:
                self._expires = expires
                return False
        self._expires = None
        if spec.holder_identity != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = s.lease_seconds
        spec.renew_time = now
        if self._advertise:
            lease.metadata.annotations = {**(lease.metadata.annotations or {}), ADVERTISE: self._advertise}
        try:
            await self._api.replace_namespaced_lease(s.name, s.namespace, lease)  # carries resourceVersion
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise
        return True
