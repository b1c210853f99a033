"""Follows asynchronous ALB jobs to their end, asking about all of them together (up to 20 JobIds a call)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from alb_membership.alb.client import AlbClient
from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import Job

log = logging.getLogger(__name__)


class JobTracker:
    def __init__(self, client: AlbClient, interval: float = 0.5, unknown_after: float = 600.0) -> None:
        self._client = client
        self._interval = interval
        self._unknown_after = unknown_after
        self._waiting: dict[str, tuple[asyncio.Future[Job], float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, job_id: str) -> Job:
        """The job's final state; status "Unknown" if the cloud never confirmed it within ``unknown_after``."""
        if job_id not in self._waiting:
            self._waiting[job_id] = (asyncio.get_running_loop().create_future(), time.monotonic())
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="job-tracker")
        return await asyncio.shield(self._waiting[job_id][0])

    async def _run(self) -> None:
        # One look per interval covers every job in flight, however many groups they belong to.
        while self._waiting:
            await asyncio.sleep(self._interval)
            await self._poll()

    async def _poll(self) -> None:
        ids = list(self._waiting)
        try:
            found = await self._client.list_asyn_jobs(ids)
        except AlbError as exc:
            log.warning("could not read the status of %d job(s): %s", len(ids), exc)
            found = {}
        now = time.monotonic()
        for job_id in ids:
            future, since = self._waiting[job_id]
            job = found.get(job_id)
            if job is None or job.status == "Processing":
                if now - since <= self._unknown_after:
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
