"""Follows asynchronous ALB jobs to their end, asking about all of them together (up to 20 JobIds a call)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Job

log = logging.getLogger(__name__)


class JobTracker:
    def __init__(
        self,
        client: AlbClient,
        interval: float = 0.5,
        unknown_after: float = 600.0,
        max_backoff: float = 30.0,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._interval = interval
        self._unknown_after = unknown_after
        self._max_backoff = max_backoff
        self._on_error = on_error
        self._waiting: dict[str, tuple[asyncio.Future[Job], float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, job_id: str, extra_seconds: float = 0.0) -> Job:
        """The job's final state; status "Unknown" if the cloud never confirmed it within ``unknown_after`` plus
        ``extra_seconds`` (a removal's job may last the group's whole connection drain)."""
        if job_id not in self._waiting:
            deadline = time.monotonic() + self._unknown_after + extra_seconds
            self._waiting[job_id] = (asyncio.get_running_loop().create_future(), deadline)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="job-tracker")
        return await asyncio.shield(self._waiting[job_id][0])

    async def _run(self) -> None:
        # One look per interval covers every job in flight, however many groups they belong to. Any error (the
        # cloud, a credentials refresh, a bug) is logged and retried with backoff: every group waiting on a job
        # depends on this loop going on.
        delay = self._interval
        while self._waiting:
            await asyncio.sleep(delay)
            try:
                found = await self._client.list_asyn_jobs(list(self._waiting))
            except Exception as exc:
                delay = min(self._max_backoff, delay * 2)
                log.warning(
                    "could not read the status of %d job(s) (%s: %s); next look in %.1fs",
                    len(self._waiting),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._on_error()
                found = {}
            else:
                delay = self._interval
            self._settle(found)

    def _settle(self, found: dict[str, Job]) -> None:
        now = time.monotonic()
        for job_id, (future, deadline) in list(self._waiting.items()):
            job = found.get(job_id)
            if job is None or job.status == "Processing":
                if now <= deadline:
                    continue
                job = Job(
                    job_id,
                    "Unknown",
                    "JobNotConfirmed",
                    f"not confirmed by ListAsynJobs within {self._unknown_after:.0f}s",
                )
            del self._waiting[job_id]
            if not future.done():
                future.set_result(job)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
