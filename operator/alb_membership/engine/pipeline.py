"""The change pipeline of one server group, removals and additions: coalesce, wait for the group
(engine/group_status.py), check, record, call, follow the job (engine/followed.py), apply the outcome
(engine/outcomes.py).

Why one pipeline per group: the cloud refuses a change to a group while one of its jobs runs
(IncorrectStatus.ServerGroup), so calls for a group go out one at a time, and whatever was decided while a
job ran goes out together in the next call; removals go first, additions never wait behind more than one removal
call. Order of writes, the contract of PRODUCT.md 3.6: a removal's
ClientToken is in the status of every resource involved before the call that uses it, so an operator that dies
at any point is followed by one that sends the same call again and cannot start a second job. Last check before
a call (PRODUCT.md 3.7): a server that a live owner holds right now, in any resource on the group, stays; an
addition goes only while a live owner wants it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from alb_membership.alb.client import AlbClient
from alb_membership.alb.errors import FINAL_CODES, AlbError, AlbRequestRefused
from alb_membership.alb.models import AddAnswer, ListedServer, RemoveAnswer, Server
from alb_membership.cluster.notices import Notices
from alb_membership.engine import outcomes
from alb_membership.engine.batches import next_batch, token_for
from alb_membership.engine.call_size import CallSize
from alb_membership.engine.followed import FollowedJobs
from alb_membership.engine.group_status import READ_SECONDS, GroupStatus
from alb_membership.engine.jobs import JobTracker
from alb_membership.engine.timings import observe_exposure, observe_latency
from alb_membership.metrics import Metrics
from alb_membership.model.health import set_health
from alb_membership.model.ledger import ABSENT, IN_GROUP, Change, Entry, GroupLedger, OwnerKey, now
from alb_membership.model.state import ResourceState

log = logging.getLogger(__name__)


def _what(batch: list[Entry]) -> str:
    return "adding" if batch[0].adding else "removing"


Holders = dict[Server, dict[OwnerKey, tuple[str, str | None]]]


@dataclass(frozen=True)
class PipelineSettings:
    batch_size: int = 40
    coalesce_seconds: float = 0.2
    error_retry_seconds: float = 60.0  # after a non-retryable error (permissions, group not found)
    transient_retry_seconds: float = 5.0  # after the client's own retries ran out
    max_job_attempts: int = 5
    group_poll_seconds: float = 0.25  # while the group is Configuring with a job of ours running
    group_wait_seconds: float = 30.0  # then the call goes out anyway, and its retries take over
    refused_retry_seconds: float = 900.0  # a server refused on the way, after max_job_attempts tries a minute apart


class Directory(Protocol):
    """What the pipeline asks of the rest of the operator."""

    def states_of(self, entries: Iterable[Entry], members: bool = False) -> list[ResourceState]:
        """The resources whose owners' leaving decided these removals (or whose live owners want these additions);
        ``members``: the resources of the entries' live owners too."""
        ...

    def holders(self, ledger: GroupLedger) -> Holders:
        """Live owners of the group's servers in the cluster right now, across every resource on the group."""
        ...

    def dry_run(self, entry: Entry) -> bool: ...

    async def flush(self, states: Iterable[ResourceState]) -> None:
        """Writes their status now (raises when it cannot: no call goes out unrecorded)."""
        ...

    def changed(self, states: Iterable[ResourceState]) -> None:
        """Their status should be written soon."""
        ...

    def in_group_changed(self, ledger: GroupLedger, servers: Iterable[Server]) -> None:
        """What the group shows of these servers changed (added, removed, read): their pods' readiness gates, and
        live owners of servers that are out (an undo, or registration, decides again)."""
        ...


@dataclass
class Services:
    client: AlbClient
    tracker: JobTracker
    metrics: Metrics
    notices: Notices
    settings: PipelineSettings


class GroupPipeline:
    def __init__(self, ledger: GroupLedger, directory: Directory, services: Services) -> None:
        self.ledger = ledger
        self._dir = directory
        self._s = services
        self._queue: OrderedDict[Server, None] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.TimerHandle] = set()
        self._calling: set[Server] = set()  # the batch being sent now
        self._jobs = FollowedJobs(ledger.group_id, self._follow_crashed)
        self._status = GroupStatus(
            services.client,
            ledger.group_id,
            services.settings.group_poll_seconds,
            services.settings.group_wait_seconds,
        )
        self._closed = False
        self._paused_until = 0.0  # after a refused call, the group's next call waits until then
        self._size = CallSize(services.settings.batch_size)
        self._additions_waited = False  # a removal call went while additions were queued: additions go next
        self._parked: set[Server] = set()  # additions the group has no room for: tried when a removal frees some

    @property
    def group_id(self) -> str:
        return self.ledger.group_id

    @property
    def in_flight(self) -> set[Server]:
        """Servers of the call being sent and of the jobs followed: anti-entropy leaves these alone."""
        return self._calling | self._jobs.servers

    def enqueue(self, servers: Iterable[Server], first: bool = False) -> None:
        """``first``: a retry, which goes before removals decided after it (they must not overtake it)."""
        if self._closed:
            return  # this replica stopped acting; what was decided is in status for the next one
        for server in reversed(list(servers)) if first else servers:
            self._queue[server] = None
            if first:
                self._queue.move_to_end(server, last=False)
        self._s.metrics.queue_depth.labels(self.group_id).set(len(self._queue))
        self._wakeup.set()
        if self._task is None or self._task.done():
            # Also restarts a pipeline whose task died: supervision is "the next enqueue starts it again".
            self._task = asyncio.create_task(self._run(), name=f"pipeline-{self.group_id}")

    def enqueue_later(self, delay: float, servers: Iterable[Server]) -> None:
        handle: asyncio.TimerHandle
        later = list(servers)

        def fire() -> None:
            self._retries.discard(handle)
            self.enqueue(later, first=True)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._retries.add(handle)

    async def close(self) -> None:
        self._closed = True
        for handle in self._retries:
            handle.cancel()
        await self._jobs.close()
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
                # A refused call waits at the head of the queue: what was decided after it does not overtake it.
                pause = self._paused_until - asyncio.get_running_loop().time()
                if pause > 0:
                    await asyncio.sleep(pause)
                # The batch is taken once the group takes changes: what was decided during the wait goes with it.
                await self._status.until_accepts(lambda: bool(self._jobs))
                batch = next_batch(
                    self._queue,
                    self.ledger,
                    self._size.next(),
                    self._dir.dry_run,
                    busy=self.in_flight,
                    additions_first=self._additions_waited,
                )
                self._s.metrics.queue_depth.labels(self.group_id).set(len(self._queue))
                if not batch:
                    continue
                adding = batch[0].adding
                self._additions_waited = not adding and any(
                    (e := self.ledger.entries.get(s)) is not None and e.adding for s in self._queue
                )
                self._calling = {e.server for e in batch}
                try:
                    await self._process(batch)
                except Exception:
                    log.exception("removal batch for %s failed unexpectedly; retrying", self.group_id)
                    self._s.metrics.internal_errors.labels("pipeline").inc()
                    self.enqueue_later(self._s.settings.transient_retry_seconds, [e.server for e in batch])
                finally:
                    self._calling = set()

    async def _process(self, batch: list[Entry]) -> None:
        adding = batch[0].adding
        taken = {e.server: e.change for e in batch}
        # The last check, right before the call: after any wait.
        if adding:
            batch = self._unchanged(await self._not_in_yet(self._still_wanted(batch)), taken)
        else:
            batch = await self._call_off_held_and_weigh(batch, taken)
        if not batch:
            return
        s = self._s
        token = next((e.change.client_token for e in batch if e.change and e.change.client_token), None)
        token = token or token_for(batch)
        for entry in batch:
            if entry.change is not None:
                entry.change.client_token = token
        states = self._dir.states_of(batch)
        await self._dir.flush(states)  # durable before the call
        servers = sorted(e.server for e in batch)
        s.metrics.batch_servers.observe(len(servers))
        dry_run = self._dir.dry_run(batch[0])
        answer: AddAnswer | RemoveAnswer
        try:
            if adding:
                weights = {e.server: e.addition.weight for e in batch if e.addition is not None}
                answer = await s.client.add_servers(self.group_id, servers, token, weights=weights, dry_run=dry_run)
            else:
                answer = await s.client.remove_servers(self.group_id, servers, token, dry_run=dry_run)
        except AlbError as exc:
            await self._refused(batch, self._with_joined(batch, states), exc)
            return
        states = self._with_joined(batch, states)
        if answer.outcome in ("already_removed", "already_added"):
            await self._already(batch, states)
            return
        self._healthy(states)
        what = _what(batch)
        if answer.outcome == "dry_run_passed":
            outcomes.record_dry_run(batch, states, self.ledger, token)
            self._dir.changed(states)
            s.notices.post(states, "Normal", "DryRunPassed", f"precheck passed for {what} {len(servers)} server(s)")
            return
        self._size.went_through(len(batch))
        assert answer.job_id is not None
        job_id = answer.job_id
        outcomes.record_accepted(batch, states, job_id, token)
        if adding:
            s.metrics.additions.labels("submitted").inc(len(batch))
        else:
            observe_latency(s.metrics.accepted_seconds, batch)
        self._dir.changed(states)
        s.notices.post(
            states,
            "Normal",
            "RegistrationSubmitted" if adding else "RemovalSubmitted",
            f"job {job_id} {'adds' if adding else 'removes'} {len(servers)} server(s) "
            f"{'to' if adding else 'from'} {self.group_id}: "
            + ", ".join(str(x) for x in servers[:10])
            + (" ..." if len(servers) > 10 else ""),
        )
        self._follow(batch, states, job_id, adding)

    def _unchanged(self, batch: list[Entry], taken: dict[Server, Change | None]) -> list[Entry]:
        """The entries whose change is still the one taken for this call. The checks before it read the group, and
        meanwhile a live owner may have called a removal off, or a pod's leaving put a removal in an addition's
        place: such a change is not this call's any more, and goes in a call of its own kind."""
        # Only a batch without a token waits on a read, so no token written ahead is shared with what moved. The
        # round that moved a change queued it while this call held it (busy: taken off the queue), so again here.
        moved = [e for e in batch if e.change is None or e.change is not taken.get(e.server)]
        if not moved:
            return batch
        self.enqueue([e.server for e in moved if e.change is not None])
        return [e for e in batch if e not in moved]

    def _still_wanted(self, batch: list[Entry]) -> list[Entry]:
        """Additions that a live owner still wants. One nobody wants any more (its pod left while its call was out,
        or while no operator ran) is dropped, and the removal decided beside it goes; the rest, if their token was
        written ahead with it, go as a new attempt (a token reused with fewer servers is refused)."""
        wanted = [e for e in batch if e.addition is not None and e.live_owners()]
        if len(wanted) == len(batch):
            return batch
        dropped = [e for e in batch if e not in wanted]
        written = {e.addition.client_token for e in dropped if e.addition is not None and e.addition.client_token}
        for entry in wanted:
            if entry.addition is not None and entry.addition.client_token in written:
                self.ledger.new_attempt(entry.server)
        for entry in dropped:
            self.ledger.drop_addition(entry.server)
        self._dir.changed(self._dir.states_of(dropped))
        self.enqueue([e.server for e in dropped if e.removal is not None], first=True)
        return wanted

    async def _not_in_yet(self, batch: list[Entry]) -> list[Entry]:
        """Servers never read, recorded by a look at every member (a resource just created, registration just
        turned on) are read first (their ServerIds, one short read): those the group holds already are done without
        a write, which the region's write quota would pay for and the cloud refuse. A pod seen starting is not:
        the read would delay its addition for nothing."""
        unknown = [
            e.server
            for e in batch
            if e.read_first and e.in_group is None and e.addition is not None and not e.addition.sent
        ]
        if not unknown:
            return batch
        listed = await self._quick_read(unknown)
        if listed is None:
            return batch
        there = [e for e in batch if e.server in listed and listed[e.server].status in IN_GROUP]
        for server in unknown:
            if server not in listed:
                self.ledger.seen_in_group(server, ABSENT, None)
        if there:
            states = self._dir.states_of(there)
            outcomes.finish_additions(
                there,
                self.ledger,
                states,
                {e.server: (listed[e.server].status, listed[e.server].weight) for e in there},
            )
            self._s.metrics.additions.labels("already-there").inc(len(there))
            self._dir.changed(states)
            self._dir.in_group_changed(self.ledger, [e.server for e in there])
        return [e for e in batch if e not in there]

    async def _quick_read(self, servers: list[Server]) -> dict[Server, ListedServer] | None:
        """What the group shows of ``servers`` (read by their ServerIds: one missing is not in the group), within
        READ_SECONDS; None when it cannot be read (the call goes on, and the cloud's answer tells)."""
        deadline = asyncio.get_running_loop().time() + READ_SECONDS
        try:
            listed = await self._s.client.listed_servers(self.group_id, servers, deadline=deadline)
        except Exception as exc:
            log.debug("could not read %d server(s) of %s: %s", len(servers), self.group_id, exc)
            return None
        return listed

    async def _call_off_held_and_weigh(self, batch: list[Entry], taken: dict[Server, Change | None]) -> list[Entry]:
        """The weight of servers whose weight is not known yet, read now (their ServerIds, one short read): an undo
        puts a server back with the weight it had (PRODUCT.md 3.13); then, of the removals still the ones taken, the
        last check before the call."""
        unknown = [e.server for e in batch if e.removal is not None and e.removal.weight is None and not e.removal.sent]
        if unknown:
            for server, found in (await self._quick_read(unknown) or {}).items():
                self.ledger.seen_in_group(server, found.status, found.weight)
        return self._call_off_held(self._unchanged(batch, taken))

    def _follow(self, batch: list[Entry], states: list[ResourceState], job_id: str, adding: bool) -> None:
        self._jobs.follow(job_id, [e.server for e in batch], lambda: self._job_ended(batch, states, job_id, adding))

    def _with_joined(self, batch: list[Entry], states: list[ResourceState]) -> list[ResourceState]:
        """``states`` (the call's resources) and those of owners that joined its changes since (another resource's
        owner of a server first seen leaving, or live and wanting it): they hear of the outcome too, so that their
        status stops showing the change pending and their removedCount counts it."""
        known = {state.ref.uid for state in states}
        return states + [state for state in self._dir.states_of(batch) if state.ref.uid not in known]

    def _follow_crashed(self, servers: set[Server]) -> None:
        self._s.metrics.internal_errors.labels("pipeline").inc()
        self.enqueue_later(self._s.settings.transient_retry_seconds, servers)

    async def _job_ended(self, batch: list[Entry], states: list[ResourceState], job_id: str, adding: bool) -> None:
        """``adding``: what the call did (an entry's next change may be of the other kind by now)."""
        s = self._s
        extra = 0.0 if adding else self._status.drain_seconds or 0.0
        job = await s.tracker.wait(job_id, extra_seconds=extra)
        s.metrics.jobs.labels(job.status).inc()
        states = self._with_joined(batch, states)
        if job.status == "Succeeded":
            if adding:
                await self._added(batch, states, job_id)
                return
            observe_latency(s.metrics.succeeded_seconds, batch)
            observe_exposure(s.metrics, batch)
            self._removed(batch, states, job_id, f"job {job_id} removed {len(batch)} server(s) from {self.group_id}")
            return
        if adding:
            # Whatever nobody wants in any more (a removal waits behind the addition) is not tried again.
            moot = [e for e in batch if e.removal is not None]
            for entry in moot:
                entry.addition = None
            batch = [e for e in batch if e.removal is None]
            if moot:
                self.enqueue([e.server for e in moot])
            s.metrics.additions.labels("failed").inc(len(batch))
        failure = outcomes.record_failed(
            batch, self.ledger, states, job_id, job.status, job.error_code, job.error_message
        )
        if failure.attempts >= s.settings.max_job_attempts:
            delay = s.settings.error_retry_seconds
            for state in states:
                set_health(
                    state,
                    ("JobFailed", f"{failure.message}; tried {failure.attempts} times, retrying every {delay:.0f}s"),
                )
        else:
            delay = s.settings.transient_retry_seconds
        self._dir.changed(states)
        if adding:
            self._dir.in_group_changed(self.ledger, [e.server for e in batch])  # RegistrationFailed on their pods
        s.notices.post(
            states, "Warning", "RegistrationFailed" if adding else "RemovalFailed", f"{failure.message}; trying again"
        )
        self.enqueue_later(delay, [e.server for e in batch])

    async def _added(self, batch: list[Entry], states: list[ResourceState], job_id: str | None) -> None:
        """The servers are in the group: as a read shows them (Available, or Adding a little longer). A removal
        decided while the addition's call was out goes now."""
        # Not listed (a page that missed it): the cloud's own word was that it is in, Adding until a read tells more.
        listed = {s: v for s, v in (await self._read([e.server for e in batch])).items() if v[0] != "Absent"}
        states = self._with_joined(batch, states)  # the read took a while
        decided = {e.server: e.addition.decided_at for e in batch if e.addition is not None}
        outcomes.finish_additions(batch, self.ledger, states, listed, job_id)
        self._s.metrics.additions.labels("succeeded" if job_id else "already-there").inc(len(batch))
        for server, when in decided.items():
            entry = self.ledger.entries.get(server)
            if entry is not None and entry.in_group == "Available":
                self._s.metrics.ready_to_traffic_seconds.observe((now() - when).total_seconds())
        self._healthy(states)
        self._dir.changed(states)
        self._dir.changed(self._dir.states_of(batch, members=True))  # live owners: where their server is now
        self._dir.in_group_changed(self.ledger, [e.server for e in batch])
        self._s.notices.post(
            states,
            "Normal",
            "RegistrationSucceeded",
            (f"job {job_id} added" if job_id else "already in the group:")
            + f" {len(batch)} server(s) of {self.group_id}: "
            + ", ".join(str(e.server) for e in batch[:10]),
        )
        leaving = [e.server for e in batch if e.removal is not None]
        if leaving:
            self.enqueue(leaving)

    async def _read(self, servers: list[Server]) -> dict[Server, tuple[str, int | None]]:
        """What the group shows of ``servers`` now (status, weight); absent ones are Absent. Empty when the group
        cannot be read in time: callers then keep what they knew."""
        deadline = asyncio.get_running_loop().time() + self._s.settings.group_wait_seconds
        try:
            listed = await self._s.client.listed_servers(self.group_id, servers, deadline=deadline)
        except AlbError as exc:
            log.warning("could not read %s's servers (%s)", self.group_id, exc)
            return {}
        return {s: (listed[s].status, listed[s].weight) if s in listed else ("Absent", None) for s in servers}

    def _call_off_held(self, batch: list[Entry]) -> list[Entry]:
        holders = self._dir.holders(self.ledger)
        held = [e for e in batch if holders.get(e.server)]
        if not held:
            return batch
        states = self._dir.states_of(held)
        written = {e.removal.client_token for e in held if e.removal is not None and e.removal.client_token}
        for entry in held:
            self.ledger.cancel_held(entry.server, holders[entry.server])
        for entry in batch:
            if entry not in held and entry.removal is not None and entry.removal.client_token in written:
                # Its token was written ahead with the called-off servers: reused with fewer servers, the cloud
                # would refuse it (IdempotenceSignatureMismatch). If that call did go out, its job took all of
                # them, and the rest are found gone.
                self.ledger.new_attempt(entry.server)
        self._s.metrics.called_off.inc(len(held))
        self._dir.changed(states)
        self._s.notices.post(
            states,
            "Normal",
            "RemovalCalledOff",
            f"{len(held)} server(s) stay in {self.group_id}: a live pod or endpoint holds them now ("
            + ", ".join(str(e.server) for e in held[:10])
            + ")",
        )
        return [e for e in batch if e not in held]

    def _removed(self, batch: list[Entry], states: list[ResourceState], job_id: str | None, message: str) -> None:
        reason = "RemovalSucceeded" if job_id else "AlreadyRemoved"
        overtaken = outcomes.finish_removals(batch, self.ledger, states, job_id, self._status.drain_seconds or 0.0)
        self._healthy(states)  # the last removal refused on the way may be one of these
        self._dir.changed(states)
        self._dir.changed(self._dir.states_of(batch, members=True))  # live owners: where their server is now
        self._s.notices.post(states, "Normal", reason, message)
        if overtaken:
            self._s.notices.post(
                states,
                "Warning",
                "ServerHeldAfterRemoval",
                "a live pod or endpoint came to hold a server after its removal call went out (an IP reused within "
                "a job's time, a deletion that never came); it goes back into the group: "
                + ", ".join(str(e.server) for e in overtaken[:10]),
            )
        self._dir.in_group_changed(self.ledger, [e.server for e in batch])
        if self._parked:  # room in the group again
            parked, self._parked = self._parked, set()
            self.enqueue(parked)

    async def _already(self, batch: list[Entry], states: list[ResourceState]) -> None:
        """The cloud refused the whole call because a server of it is not in the group (a removal) or is in it
        already (an addition). Alone, that server's change is done. With others, a listing tells which; where it
        cannot (the group could not be listed: a RAM policy without ListServerGroupServers, throttling; or, for a
        removal, every server is still listed: a removed server shows Removing while it drains), the call is split
        in two, each half a new attempt, until each server's own answer tells. Never sent again as it was."""
        adding = batch[0].adding
        if len(batch) == 1:
            self._healthy(states)
            if adding:
                await self._added(batch, states, None)
            else:
                self._removed(batch, states, None, f"{batch[0].server} was no longer in {self.group_id}")
            return
        deadline = asyncio.get_running_loop().time() + self._s.settings.group_wait_seconds
        try:
            if adding:
                listed = await self._s.client.listed_servers(
                    self.group_id, [e.server for e in batch], deadline=deadline
                )
                done = {server for server, found in listed.items() if found.status in IN_GROUP}
            else:
                done = await self._s.client.out_of_rotation(self.group_id, [e.server for e in batch], deadline=deadline)
        except AlbError as exc:
            log.warning("could not list %s to tell which servers are done (%s); splitting the call", self.group_id, exc)
            self._s.notices.post(
                states,
                "Warning",
                "ServerGroupUnlisted",
                f"could not list {self.group_id} ({exc}): the call is split to tell which servers are done; "
                "grant alb:ListServerGroupServers to save the calls",
            )
            done = set()
        states = self._with_joined(batch, states)  # the listing took a while
        finished, rest = outcomes.split_gone(batch, done)
        if finished:
            self._healthy(states)
            if adding:
                await self._added(finished, states, None)
            else:
                self._removed(finished, states, None, f"{len(finished)} server(s) were no longer in {self.group_id}")
        if rest:
            self._resend(rest, states, split=not finished)

    def _healthy(self, states: list[ResourceState]) -> None:
        """A call went through: Ready again, unless a removal of the resource is still refused on the way."""
        refused = outcomes.refused_resources(self.ledger)
        for state in states:
            if state.ref.uid not in refused:
                set_health(state, None)

    def _resend(self, batch: list[Entry], states: list[ResourceState], split: bool) -> None:
        """Another call, for other servers than the last one held: a new attempt, under a new token."""
        for entry in batch:
            self.ledger.new_attempt(entry.server)
        if split:
            self._size.halve_once(len(batch))
        self._dir.changed(states)
        self.enqueue([e.server for e in batch], first=True)

    async def _refused(self, batch: list[Entry], states: list[ResourceState], exc: AlbError) -> None:
        s = self._s
        if isinstance(exc, AlbRequestRefused):
            self._refused_on_the_way(batch, states, exc)
            return
        message = outcomes.record_refused(batch, self.ledger, states, exc)
        delay = s.settings.transient_retry_seconds if outcomes.retry_soon(exc) else s.settings.error_retry_seconds
        self._dir.changed(states)
        if not batch[0].adding:
            s.notices.post(states, "Warning", "RemovalRefused", f"{message}; next try in {delay:.0f}s")
            self._paused_until = asyncio.get_running_loop().time() + delay
            self.enqueue([e.server for e in batch], first=True)
            return
        # An addition refused never holds up the group's removals.
        s.metrics.additions.labels("refused").inc(len(batch))
        self._dir.in_group_changed(self.ledger, [e.server for e in batch])
        if exc.code in FINAL_CODES:
            if len(batch) > 1:
                # One server can refuse the whole call (a static server of the wrong type, the last free places
                # of a full group): halves, until each server's own answer tells.
                self._size.halve_once(len(batch))
                s.notices.post(
                    states,
                    "Warning",
                    "RegistrationSplit",
                    f"adding {len(batch)} server(s) to {self.group_id} was refused ({exc}); trying them in halves",
                )
                self.enqueue([e.server for e in batch], first=True)
                return
            # The group is full, or cannot take this server as it is: tried again when a removal makes room, and
            # now and then; never in a loop.
            self._parked.update(e.server for e in batch)
            delay = s.settings.refused_retry_seconds
            message = f"{batch[0].server}: {message}"
        s.notices.post(states, "Warning", "RegistrationRefused", f"{message}; next try in {delay:.0f}s")
        self.enqueue_later(delay, [e.server for e in batch])

    def _refused_on_the_way(self, batch: list[Entry], states: list[ResourceState], exc: AlbRequestRefused) -> None:
        """Not the cloud's answer: something on the way refused the request (its size, most likely). Never sent
        again as it was: a call of several servers is split, and the group's calls stay that small until calls
        of that size have gone through a while; a server refused alone is tried again as a new attempt, every
        minute at first, then every refused_retry_seconds, with Degraded=TransportRefused meanwhile."""
        s = self._s
        if len(batch) > 1:
            self._size.refused(len(batch))
            s.notices.post(
                states,
                "Warning",
                "RegistrationSplit" if batch[0].adding else "RemovalSplit",
                f"a call {_what(batch)} {len(batch)} server(s) was refused on the way to the ALB API ({exc}); "
                f"calls for {self.group_id} now take at most {self._size.cap}",
            )
            self._resend(batch, states, split=False)
            return
        [entry] = batch
        refusal = outcomes.record_refused_alone(entry, self.ledger, states, exc, s.settings.max_job_attempts)
        self._dir.changed(states)
        delay = (
            s.settings.error_retry_seconds
            if refusal.attempts < s.settings.max_job_attempts
            else (s.settings.refused_retry_seconds)
        )
        reason = "RegistrationRefused" if entry.adding else "RemovalRefused"
        s.notices.post(states, "Warning", reason, f"{refusal.message}; next try in {delay:.0f}s")
        self.enqueue_later(delay, [entry.server])
