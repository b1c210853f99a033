"""The jobs of one group being followed, each on a task of its own: the group's next call need not wait for them
(a removal's job may last a whole connection drain while the group already takes the next change)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from alb_membership.alb.models import Server

log = logging.getLogger(__name__)


class FollowedJobs:
    def __init__(self, group_id: str, on_crash: Callable[[set[Server]], None]) -> None:
        """``on_crash``: following a job failed unexpectedly; its servers must go again."""
        self._group_id = group_id
        self._on_crash = on_crash
        self._jobs: dict[str, tuple[asyncio.Task[None], set[Server]]] = {}

    def __bool__(self) -> bool:
        return bool(self._jobs)

    @property
    def servers(self) -> set[Server]:
        return set().union(*(servers for _, servers in self._jobs.values()))

    def follow(self, job_id: str, servers: Iterable[Server], until_end: Callable[[], Awaitable[None]]) -> None:
        followed = set(servers)

        async def follow() -> None:
            try:
                await until_end()
            except Exception:
                log.exception(
                    "following job %s of %s failed unexpectedly; retrying its removals", job_id, self._group_id
                )
                self._on_crash(followed)
            finally:
                del self._jobs[job_id]

        self._jobs[job_id] = (asyncio.create_task(follow(), name=f"job-{job_id}"), followed)

    async def close(self) -> None:
        tasks = [task for task, _ in self._jobs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
