"""The removal pipeline of one server group: coalesce, record, call, follow the job, record the outcome.

Why one pipeline per group: the cloud refuses a change to a group while one of its jobs runs
(IncorrectStatus.ServerGroup), so calls for a group go out one at a time, and whatever was decided while a
job ran goes out together in the next call. Order of writes, the contract of PRODUCT.md 3.6: a removal's
ClientToken is in the resource's status before the call that uses it, so an operator that dies at any point
is followed by one that sends the same call again and cannot start a second job.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Histogram

from alb_membership.alb.batching import client_token
from alb_membership.alb.client import AlbClient
from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import Server
from alb_membership.jobs import JobTracker
from alb_membership.kube import Kube
from alb_membership.metrics import Metrics
from alb_membership.state import JobRecord, MembershipState, Pending, now
from alb_membership.status_writer import StatusWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSettings:
    batch_size: int = 40
    coalesce_seconds: float = 0.2
    error_retry_seconds: float = 60.0  # after a non-retryable error (permissions, group not found)
    transient_retry_seconds: float = 5.0  # after the client's own retries ran out
    max_job_attempts: int = 5


@dataclass
class Services:
    client: AlbClient
    tracker: JobTracker
    writer: StatusWriter
    kube: Kube
    metrics: Metrics
    settings: PipelineSettings


def token_for(state: MembershipState, batch: list[Pending]) -> str:
    """From UIDs only: the resource's, each member's (pod UID for pods) and its attempt number."""
    seed = "/".join([state.ref.uid, *sorted(f"{p.member_id}#{p.attempt}" for p in batch)])
    return client_token(seed, [p.server for p in batch])


def set_health(state: MembershipState, degraded: tuple[str, str] | None) -> None:
    if degraded is None:
        state.set_condition("Degraded", "False", "AsExpected", "removals are going through")
        state.set_condition("Ready", "True", "Reconciled", "watching members; removals go out as they start leaving")
    else:
        reason, message = degraded
        state.set_condition("Degraded", "True", reason, message)
        state.set_condition("Ready", "False", reason, message)


def advice(exc: AlbError, group_id: str) -> str:
    if exc.code == "ResourceNotFound.ServerGroup":
        return f"server group {group_id} does not exist in this region: check spec.serverGroupId and spec.region"
    if exc.code.startswith(("Forbidden", "NoPermission")) or exc.http_status == 403:
        return f"the operator's credentials may not change {group_id}: grant alb:RemoveServersFromServerGroup"
    if exc.code.startswith(("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken")):
        return "the operator's credentials are not accepted: check the AccessKey, RRSA role or instance role"
    return "the cloud refused the removal; fix the cause named here, the operator retries every minute"


class GroupPipeline:
    def __init__(self, group_id: str, services: Services, on_idle: Callable[[], None] = lambda: None) -> None:
        self.group_id = group_id
        self._s = services
        self._queue: OrderedDict[tuple[str, str], MembershipState] = OrderedDict()  # (uid, member id)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_idle = on_idle

    def enqueue(self, state: MembershipState, member_ids: list[str]) -> None:
        for mid in member_ids:
            if mid in state.pending:
                self._queue[(state.ref.uid, mid)] = state
        self._s.metrics.queue_depth.labels(self.group_id).set(len(self._queue))
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"pipeline-{self.group_id}")

    def enqueue_later(self, delay: float, state: MembershipState, member_ids: list[str]) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, state, member_ids)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Removals that arrive close together go out in one call.
            await asyncio.sleep(self._s.settings.coalesce_seconds)
            while self._queue:
                state, batch = self._next_batch()
                self._s.metrics.queue_depth.labels(self.group_id).set(len(self._queue))
                if batch:
                    try:
                        await self._process(state, batch)
                    except Exception:
                        log.exception("removal batch for %s failed unexpectedly; retrying", state.ref)
                        self.enqueue_later(
                            self._s.settings.transient_retry_seconds, state, [p.member_id for p in batch]
                        )

    def _next_batch(self) -> tuple[MembershipState, list[Pending]]:
        """The oldest queued removal's resource, and what goes out with it: the exact batch it was sent in
        before (same ClientToken), or up to batch_size fresh removals of that resource."""
        (uid, first_id), state = next(iter(self._queue.items()))
        first = state.pending.get(first_id)
        candidates = [mid for (u, mid) in self._queue if u == uid and mid in state.pending]
        if first is not None and first.client_token:
            chosen = [state.pending[m] for m in state.pending if state.pending[m].client_token == first.client_token]
        else:
            chosen = [state.pending[m] for m in candidates if not state.pending[m].client_token]
            chosen = chosen[: self._s.settings.batch_size]
        for p in chosen:
            self._queue.pop((uid, p.member_id), None)
        self._queue.pop((uid, first_id), None)
        return state, chosen

    async def _process(self, state: MembershipState, batch: list[Pending]) -> None:
        s = self._s
        token = batch[0].client_token or token_for(state, batch)
        for p in batch:
            p.client_token = token
        state.changed()
        if not await s.writer.flush(state):  # durable before the call; False: the resource is gone
            return
        servers = sorted({p.server for p in batch})
        ids = [p.member_id for p in batch]
        s.metrics.batch_servers.observe(len(servers))
        try:
            removal = await s.client.remove_servers(self.group_id, servers, token, dry_run=state.spec.dry_run)
        except AlbError as exc:
            await self._refused(state, batch, exc)
            return
        set_health(state, None)
        trigger = ", ".join(sorted({p.trigger for p in batch}))
        if removal.outcome == "dry_run_passed":
            state.add_job(
                JobRecord("", token, [str(x) for x in servers], trigger, now(), "DryRunPassed", finished_at=now())
            )
            await self._removed(
                state,
                ids,
                "DryRunPassed",
                f"precheck passed for removing {len(servers)} server(s) from {self.group_id}",
            )
            return
        if removal.outcome == "already_removed":
            await self._already_removed(state, batch, servers)
            return
        assert removal.job_id is not None
        self._record_accepted(state, batch, token, trigger, removal.job_id, servers)
        s.writer.soon(state)
        await s.kube.event(
            state.ref,
            "Normal",
            "RemovalSubmitted",
            f"job {removal.job_id} removes {len(servers)} server(s) from {self.group_id}: "
            + ", ".join(str(x) for x in servers[:10])
            + (" ..." if len(servers) > 10 else ""),
        )
        job = await s.tracker.wait(removal.job_id)
        await self._finished(state, batch, job.status, removal.job_id, job.error_code, job.error_message)

    def _record_accepted(
        self, state: MembershipState, batch: list[Pending], token: str, trigger: str, job_id: str, servers: list[Server]
    ) -> None:
        if not any(j.job_id == job_id for j in state.jobs):  # a re-sent call returns the job already recorded
            state.add_job(JobRecord(job_id, token, [str(x) for x in servers], trigger, now()))
        accepted = now()
        for p in batch:
            self._observe_latency(self._s.metrics.accepted_seconds, p, accepted)

    async def _finished(
        self,
        state: MembershipState,
        batch: list[Pending],
        status: str,
        job_id: str,
        error_code: str | None,
        error_message: str | None,
    ) -> None:
        s = self._s
        ids = [p.member_id for p in batch]
        s.metrics.jobs.labels(status).inc()
        for record in state.jobs:
            if record.job_id == job_id:
                record.status = status
                record.finished_at = now()
                record.error = f"{error_code}: {error_message}" if error_code else None
        if status == "Succeeded":
            done = now()
            for p in batch:
                self._observe_latency(s.metrics.succeeded_seconds, p, done)
            await self._removed(
                state, ids, "RemovalSucceeded", f"job {job_id} removed {len(batch)} server(s) from {self.group_id}"
            )
            return
        # Failed, or never confirmed: the same token would only return the same job, so the next try is a
        # new attempt with a new token.
        for p in batch:
            p.attempt += 1
            p.client_token = None
        attempts = max(p.attempt for p in batch)
        message = f"job {job_id} {status.lower()} ({error_code or 'no error code'}: {error_message or '-'})"
        if attempts >= s.settings.max_job_attempts:
            set_health(
                state,
                (
                    "JobFailed",
                    f"{message}; tried {attempts} times, retrying every {s.settings.error_retry_seconds:.0f}s",
                ),
            )
            delay = s.settings.error_retry_seconds
        else:
            delay = s.settings.transient_retry_seconds
        state.changed()
        s.writer.soon(state)
        await s.kube.event(state.ref, "Warning", "RemovalFailed", f"{message}; trying again")
        self.enqueue_later(delay, state, ids)

    async def _removed(self, state: MembershipState, ids: list[str], reason: str, message: str) -> None:
        state.removed(ids)
        self._s.writer.soon(state)
        await self._s.kube.event(state.ref, "Normal", reason, message)

    async def _already_removed(self, state: MembershipState, batch: list[Pending], servers: list[Server]) -> None:
        """The cloud refuses the whole call when any server is not in the group; find which ones still are
        and send those again."""
        s = self._s
        if len(servers) == 1:
            gone = batch
        else:
            present = {
                (x.get("ServerType"), x.get("ServerId"), x.get("Port"))
                for x in await s.client.list_server_group_servers(self.group_id)
            }
            gone = [p for p in batch if (p.server.server_type, p.server.server_id, p.server.port) not in present]
        state.removed([p.member_id for p in gone])
        rest = [p for p in batch if p not in gone]
        for p in rest:
            p.attempt += 1
            p.client_token = None
        state.changed()
        s.writer.soon(state)
        if gone:
            await s.kube.event(
                state.ref, "Normal", "AlreadyRemoved", f"{len(gone)} server(s) were no longer in {self.group_id}"
            )
        if rest:
            self.enqueue(state, [p.member_id for p in rest])

    async def _refused(self, state: MembershipState, batch: list[Pending], exc: AlbError) -> None:
        s = self._s
        ids = [p.member_id for p in batch]
        if exc.retryable:
            # The client's own retries ran out; keep the token and try again a little later.
            set_health(state, ("CloudUnavailable", f"the ALB API keeps failing ({exc}); retrying"))
            delay = s.settings.transient_retry_seconds
        else:
            set_health(state, (exc.code.replace(".", ""), f"{advice(exc, self.group_id)} ({exc})"))
            delay = s.settings.error_retry_seconds
            # A refused call started no job, so its token may be reused with other servers next time.
            for p in batch:
                p.client_token = None
        state.changed()
        s.writer.soon(state)
        await s.kube.event(state.ref, "Warning", "RemovalRefused", f"{exc}; next try in {delay:.0f}s")
        self.enqueue_later(delay, state, ids)

    @staticmethod
    def _observe_latency(histogram: Histogram, p: Pending, when: dt.datetime) -> None:
        histogram.labels("observed").observe(max(0.0, (when - p.decided_at).total_seconds()))
        if p.deletion_started is not None:
            histogram.labels("deletion").observe(max(0.0, (when - p.deletion_started).total_seconds()))
