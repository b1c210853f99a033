"""Writes each resource's status: soon after a change (coalescing bursts), and at once when a removal needs its
pending record to be durable before the cloud call. Each write is a JSON merge patch of what changed since the
last write, so a resource with thousands of members costs a few bytes per change, not its whole status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from alb_membership.cluster.kube import Kube
from alb_membership.model.state import ResourceState

log = logging.getLogger(__name__)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7386 patch that turns ``old`` into ``new``: changed keys, None for removed ones, maps recursively."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


class StatusWriter:
    def __init__(self, kube: Kube, project: Callable[[ResourceState], dict[str, Any]], delay: float = 0.05) -> None:
        self._kube = kube
        self._project = project
        self._delay = delay
        self._written: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._scheduled: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def known(self, state: ResourceState, status: dict[str, Any]) -> None:
        """What the resource's status is now, as read from the API server."""
        self._written.setdefault(state.ref.uid, status)

    def soon(self, state: ResourceState) -> None:
        if self._closed:
            return
        uid = state.ref.uid
        if uid not in self._scheduled or self._scheduled[uid].done():
            self._scheduled[uid] = asyncio.create_task(self._later(state), name=f"status-{state.ref}")

    async def _later(self, state: ResourceState) -> None:
        # Loops until what it wrote is the latest: a change made while a write is under way (``soon`` sees this
        # task still running and starts no other) must not wait for some later change to reach the status.
        while True:
            await asyncio.sleep(self._delay)
            try:
                if not await self.flush(state):
                    return
            except Exception as exc:
                log.warning("status of %s not written (%s); retrying", state.ref, exc)
                await asyncio.sleep(1.0)

    async def flush(self, state: ResourceState) -> bool:
        """Writes what changed; False when nothing had (or the resource no longer exists)."""
        uid = state.ref.uid
        async with self._locks.setdefault(uid, asyncio.Lock()):
            status = self._project(state)
            patch = merge_patch(self._written.get(uid, {}), status)
            if not patch:
                return False
            if not await self._kube.patch_status(state.ref, patch):
                return False
            self._written[uid] = status
            return True

    def forget(self, state: ResourceState) -> None:
        uid = state.ref.uid
        self._written.pop(uid, None)
        self._locks.pop(uid, None)
        task = self._scheduled.pop(uid, None)
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in self._scheduled.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
