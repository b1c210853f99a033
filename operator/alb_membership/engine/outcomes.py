"""What a removal call's answer, or its job's end, means for the ledger and for each resource involved.
Plain code: the pipeline calls these and then tells people (Events) and Prometheus."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from alb_membership.alb.errors import CREDENTIALS_UNAVAILABLE, IDEMPOTENCE_MISMATCHES, AlbError
from alb_membership.alb.models import Server
from alb_membership.model.health import advice, set_health
from alb_membership.model.ledger import DRY_RUN, Entry, GroupLedger, now
from alb_membership.model.state import JobRecord, ResourceState


def trigger_of(batch: list[Entry]) -> str:
    triggers = sorted({e.change.trigger for e in batch if e.change})
    return ", ".join(f"add: {t}" if batch[0].adding else t for t in triggers)


def record_accepted(batch: list[Entry], states: Iterable[ResourceState], job_id: str, token: str) -> None:
    servers = [e.server.compact for e in batch]
    for entry in batch:
        if entry.change is not None:
            entry.change.job_id = job_id
    for state in states:
        state.add_job(JobRecord(job_id, token, servers, trigger_of(batch), now()))


def record_dry_run(batch: list[Entry], states: Iterable[ResourceState], ledger: GroupLedger, token: str) -> None:
    servers = [e.server.compact for e in batch]
    for state in states:
        state.add_job(JobRecord("", token, servers, trigger_of(batch), now(), "DryRunPassed", finished_at=now()))
    for entry in batch:
        if entry.adding:
            ledger.added(entry.server, DRY_RUN, None)  # would be added: not asked again while it stays so
        else:
            ledger.finished(entry.server, removed=False)


def finish_additions(
    batch: list[Entry],
    ledger: GroupLedger,
    states: Iterable[ResourceState],
    listed: dict[Server, tuple[str, int | None]],
    job_id: str | None = None,
) -> None:
    """The servers are in the group (``job_id`` succeeded, or they were there already): each as the group shows it
    (``listed``: status and weight; Adding until a read says more)."""
    if job_id:
        for state in states:
            state.job_finished(job_id, "Succeeded", None)
    for entry in batch:
        weight = entry.addition.weight if entry.addition is not None else None
        in_group, listed_weight = listed.get(entry.server, ("Adding", weight))
        ledger.added(entry.server, in_group, listed_weight)


def finish_removals(
    batch: list[Entry],
    ledger: GroupLedger,
    states: Iterable[ResourceState],
    job_id: str | None = None,
    drain_seconds: float = 0.0,
    removed_here: bool = True,
) -> list[Entry]:
    """The servers are out of the group (``job_id`` succeeded, or they were gone already): the resources record it,
    and the ledger forgets the removals and their leaving owners. Returns the entries a live owner came to hold
    after the call went out (a pod that reused the IP): their server is gone although they hold it, which a person
    must hear of."""
    by_uid = {s.ref.uid: s for s in states}
    if job_id:
        for state in by_uid.values():
            state.job_finished(job_id, "Succeeded", None)
            if drain_seconds:  # UNCONFIRMED that the job ends as draining begins: then "until at most" holds
                state.drained([e.server.compact for e in batch], now() + dt.timedelta(seconds=drain_seconds))
    for entry in batch if removed_here else ():  # found out already by anti-entropy: not counted as removed
        for uid in {uid for uid, _ in entry.leaving_owners()}:
            if uid in by_uid:
                by_uid[uid].removed_count += 1
    return [e for e in (ledger.finished(entry.server) for entry in batch) if e is not None and e.owners]


@dataclass(frozen=True)
class Failure:
    message: str
    attempts: int


def record_failed(
    batch: list[Entry],
    ledger: GroupLedger,
    states: Iterable[ResourceState],
    job_id: str,
    status: str,
    error_code: str | None,
    error_message: str | None,
) -> Failure:
    """Failed, or never confirmed: each server goes again as a new attempt (new token)."""
    error = f"{error_code}: {error_message}" if error_code else None
    for state in states:
        state.job_finished(job_id, status, error)
    for entry in batch:
        ledger.new_attempt(entry.server)
        if entry.change is not None:
            entry.change.failures += 1
            entry.change.error = error_code or status
    attempts = max((e.change.failures for e in batch if e.change), default=0)
    return Failure(f"job {job_id} {status.lower()} ({error_code or 'no error code'}: {error_message or '-'})", attempts)


def split_gone(batch: list[Entry], out: set[Server]) -> tuple[list[Entry], list[Entry]]:
    """The cloud refuses a whole call when any one server is not in the group: which are gone (``out``: out of
    the group's rotation), which are not."""
    return [e for e in batch if e.server in out], [e for e in batch if e.server not in out]


def retry_soon(exc: AlbError) -> bool:
    """Worth another try in seconds rather than a minute: the cloud was busy, credentials were refreshing, or the
    token needs renewing."""
    return exc.retryable or exc.code == CREDENTIALS_UNAVAILABLE or exc.code in IDEMPOTENCE_MISMATCHES


def record_refused(batch: list[Entry], ledger: GroupLedger, states: Iterable[ResourceState], exc: AlbError) -> str:
    """A call refused without a job. Retryable: the client's own retries ran out, the token stays. Otherwise the
    call started nothing, so its token may go with other servers next time. Returns what Degraded says."""
    group_id = ledger.group_id
    if exc.code in IDEMPOTENCE_MISMATCHES:
        # The token was used before with other servers (a batch changed after it was written ahead): a new attempt.
        for entry in batch:
            ledger.new_attempt(entry.server)
        return f"the cloud saw this ClientToken with other servers ({exc}); sending under a new one"
    if exc.retryable:
        degraded = ("CloudUnavailable", f"the ALB API keeps failing ({exc}); retrying")
    else:
        action = "AddServersToServerGroup" if batch and batch[0].adding else "RemoveServersFromServerGroup"
        degraded = (exc.code.replace(".", ""), f"{advice(exc, group_id, action=action)} ({exc})")
        for entry in batch:
            ledger.unsend(entry.server)
            if entry.change is not None:
                entry.change.error = exc.code
    for state in states:
        set_health(state, degraded)
    return degraded[1]


def record_refused_alone(
    entry: Entry, ledger: GroupLedger, states: Iterable[ResourceState], exc: AlbError, quick_tries: int
) -> Failure:
    """One server whose call something on the way to the cloud refused: each try is a new attempt (a new token),
    the refusals counted on their own (splits and failed jobs are other attempts)."""
    ledger.new_attempt(entry.server)
    refusals = 0
    if entry.change is not None:
        entry.change.refused += 1
        entry.change.error = exc.code
        refusals = entry.change.refused
    pace = "every minute" if refusals < quick_tries else "now less often"
    doing = f"adding {entry.server} to" if entry.adding else f"removing {entry.server} from"
    message = (
        f"{doing} {ledger.group_id} was refused on the way to the ALB API ({exc}), {refusals} time(s), tried "
        f"again {pace}: check the proxy, gateway or WAF between the operator and the API"
    )
    for state in states:
        set_health(state, ("TransportRefused", message))
    return Failure(message, refusals)


def refused_resources(ledger: GroupLedger) -> set[str]:
    """Resources with a change in this group that the way to the cloud keeps refusing: not healthy, whatever
    other calls of theirs go through."""
    return {uid for e in ledger.changing() if e.change is not None and e.change.refused for uid, _ in e.concerned()}
