"""Writes each resource's status: soon after a change (coalescing bursts), and at once when a removal needs
its pending record to be durable before the cloud call."""

from __future__ import annotations

import asyncio
import logging

from alb_membership.kube import Kube
from alb_membership.state import MembershipState

log = logging.getLogger(__name__)


class StatusWriter:
    def __init__(self, kube: Kube, delay: float = 0.05) -> None:
        self._kube = kube
        self._delay = delay
        self._written: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._scheduled: dict[str, asyncio.Task[None]] = {}

    def soon(self, state: MembershipState) -> None:
        uid = state.ref.uid
        if uid not in self._scheduled or self._scheduled[uid].done():
            self._scheduled[uid] = asyncio.create_task(self._later(state), name=f"status-{state.ref}")

    async def _later(self, state: MembershipState) -> None:
        # Loops until what it wrote is the latest: a change made while a write is under way (``soon`` sees this
        # task still running and starts no other) must not wait for some later change to reach the status.
        while True:
            await asyncio.sleep(self._delay)
            try:
                await self.flush(state)
            except Exception as exc:
                log.warning("status of %s not written (%s); retrying", state.ref, exc)
                await asyncio.sleep(1.0)
                continue
            if self._written.get(state.ref.uid) == state.version:
                return

    async def flush(self, state: MembershipState) -> bool:
        """Writes the status if it changed since the last write; False when the resource no longer exists."""
        uid = state.ref.uid
        async with self._locks.setdefault(uid, asyncio.Lock()):
            version = state.version
            if self._written.get(uid) == version:
                return True
            exists = await self._kube.patch_status(state.ref, state.to_status())
            self._written[uid] = version
            return exists

    def forget(self, state: MembershipState) -> None:
        uid = state.ref.uid
        self._written.pop(uid, None)
        self._locks.pop(uid, None)
        task = self._scheduled.pop(uid, None)
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        tasks = [t for t in self._scheduled.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
