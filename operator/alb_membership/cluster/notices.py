"""Kubernetes Events on resources, posted in the background: a removal never waits for an Event."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from alb_membership.cluster.kube import Kube
from alb_membership.model.state import ResourceState


class Notices:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, states: Iterable[ResourceState], kind: str, reason: str, message: str) -> None:
        for state in states:
            task = asyncio.create_task(self._kube.event(state.ref, kind, reason, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Lets Events already posted go out (each is bounded by the client's request timeout)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
