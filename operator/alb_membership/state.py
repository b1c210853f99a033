"""One ServerGroupMembership as the operator sees it: members, pending removals, jobs, conditions.

This is the in-memory truth while the operator runs, and ``to_status``/``from_status`` mirror it into the
resource's status, so a restarted operator continues exactly where the last one stopped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.spec import Ref, Spec

MAX_JOBS = 20

ACTIVE, REMOVING, REMOVED = "Active", "Removing", "Removed"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when else None


def unstamp(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass
class Member:
    """A server that belongs to the resource. ``id`` is the pod UID for pods, so a new pod that reuses an old
    pod's IP is a different member; static servers and pod-less endpoints use ``static/..``, ``endpoint/..``."""

    id: str
    server: Server
    source: str  # pod | endpoint | static
    pod: str | None = None
    phase: str = ACTIVE

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "server": self.server.to_status(),
            "source": self.source,
            "phase": self.phase,
        }
        if self.pod:
            out["pod"] = self.pod
        return out

    @classmethod
    def from_status(cls, raw: dict[str, Any]) -> Member:
        return cls(
            raw["id"],
            Server.from_status(raw["server"]),
            raw.get("source", "pod"),
            raw.get("pod"),
            raw.get("phase", ACTIVE),
        )


@dataclass
class Pending:
    """A removal decided and not yet confirmed. ``client_token`` is set when it is put into a call; it stays
    the same for every retry and re-submission, and changes only with ``attempt`` (after a failed job)."""

    member_id: str
    server: Server
    # pod-terminating | pod-deleted | pod-gone | pod-unselected | endpoint-terminating | endpoint-gone |
    # spec-change | resource-deleted
    trigger: str
    decided_at: dt.datetime
    deletion_started: dt.datetime | None = None
    client_token: str | None = None
    attempt: int = 0

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.member_id,
            "server": self.server.to_status(),
            "trigger": self.trigger,
            "decidedAt": stamp(self.decided_at),
            "attempt": self.attempt,
        }
        if self.client_token:
            out["clientToken"] = self.client_token
        if self.deletion_started:
            out["deletionStartedAt"] = stamp(self.deletion_started)
        return out

    @classmethod
    def from_status(cls, raw: dict[str, Any]) -> Pending:
        return cls(
            member_id=raw["id"],
            server=Server.from_status(raw["server"]),
            trigger=raw.get("trigger", "unknown"),
            decided_at=unstamp(raw.get("decidedAt")) or now(),
            deletion_started=unstamp(raw.get("deletionStartedAt")),
            client_token=raw.get("clientToken"),
            attempt=int(raw.get("attempt", 0)),
        )


@dataclass
class JobRecord:
    job_id: str
    client_token: str
    servers: list[str]
    trigger: str
    submitted_at: dt.datetime
    status: str = "Processing"  # Processing | Succeeded | Failed | DryRunPassed | Unknown
    finished_at: dt.datetime | None = None
    error: str | None = None

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobId": self.job_id,
            "clientToken": self.client_token,
            "servers": self.servers,
            "trigger": self.trigger,
            "submittedAt": stamp(self.submitted_at),
            "status": self.status,
        }
        if self.finished_at:
            out["finishedAt"] = stamp(self.finished_at)
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_status(cls, raw: dict[str, Any]) -> JobRecord:
        return cls(
            job_id=raw.get("jobId", ""),
            client_token=raw.get("clientToken", ""),
            servers=list(raw.get("servers", [])),
            trigger=raw.get("trigger", ""),
            submitted_at=unstamp(raw.get("submittedAt")) or now(),
            status=raw.get("status", "Unknown"),
            finished_at=unstamp(raw.get("finishedAt")),
            error=raw.get("error"),
        )


@dataclass
class Condition:
    status: str
    reason: str
    message: str
    since: dt.datetime = field(default_factory=now)


@dataclass
class MembershipState:
    ref: Ref
    spec: Spec
    generation: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    conditions: dict[str, Condition] = field(default_factory=dict)
    version: int = 0  # bumped on every change; the status writer compares it with what it last wrote

    def changed(self) -> None:
        self.version += 1

    # -- members -------------------------------------------------------------------------------------------

    def observe(self, member: Member) -> bool:
        """Records an active member; True when that is news."""
        known = self.members.get(member.id)
        if known is not None and known.server == member.server:
            return False
        if known is not None and known.phase != ACTIVE:
            return False  # leaving already; a new server for the same id would be a new member id
        self.members[member.id] = member
        self.changed()
        return True

    def forget(self, member_id: str) -> None:
        """Drops a member whose removal is done and whose pod is gone, so the record does not grow forever."""
        if self.members.pop(member_id, None) is not None:
            self.changed()

    def decide(self, removal: Pending) -> bool:
        """Records that a member must leave; False when it is already leaving or gone."""
        member = self.members.get(removal.member_id)
        if removal.member_id in self.pending or (member is not None and member.phase == REMOVED):
            return False
        if member is None:
            self.members[removal.member_id] = Member(removal.member_id, removal.server, "pod", phase=REMOVING)
        else:
            member.phase = REMOVING
        self.pending[removal.member_id] = removal
        self.changed()
        return True

    def removed(self, member_ids: list[str]) -> None:
        for mid in member_ids:
            self.pending.pop(mid, None)
            if mid in self.members:
                self.members[mid].phase = REMOVED
        self.changed()

    def active_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.phase == ACTIVE]

    # -- jobs and conditions ----------------------------------------------------------------------------------

    def add_job(self, job: JobRecord) -> None:
        self.jobs.insert(0, job)
        del self.jobs[MAX_JOBS:]
        self.changed()

    def set_condition(self, kind: str, status: str, reason: str, message: str) -> None:
        old = self.conditions.get(kind)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return
        since = old.since if old and old.status == status else now()
        self.conditions[kind] = Condition(status, reason, message, since)
        self.changed()

    # -- status ------------------------------------------------------------------------------------------------

    def to_status(self) -> dict[str, Any]:
        return {
            "observedGeneration": self.generation,
            "memberCount": len(self.active_members()),
            "pendingCount": len(self.pending),
            "lastJob": (f"{self.jobs[0].job_id or '-'} {self.jobs[0].status}" if self.jobs else ""),
            "members": [m.to_status() for m in self.members.values()],
            "pending": [p.to_status() for p in self.pending.values()],
            "jobs": [j.to_status() for j in self.jobs],
            "conditions": [
                {
                    "type": kind,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": c.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "observedGeneration": self.generation,
                }
                for kind, c in sorted(self.conditions.items())
            ],
        }

    @classmethod
    def from_resource(cls, body: dict[str, Any]) -> MembershipState:
        meta = body["metadata"]
        status = body.get("status") or {}
        state = cls(
            ref=Ref(meta["namespace"], meta["name"], meta["uid"]),
            spec=Spec.parse(body["spec"]),
            generation=int(meta.get("generation", 0)),
        )
        for raw in status.get("members") or []:
            member = Member.from_status(raw)
            state.members[member.id] = member
        for raw in status.get("pending") or []:
            pending = Pending.from_status(raw)
            state.pending[pending.member_id] = pending
        state.jobs = [JobRecord.from_status(raw) for raw in status.get("jobs") or []]
        for raw in status.get("conditions") or []:
            state.conditions[raw["type"]] = Condition(
                raw["status"],
                raw.get("reason", ""),
                raw.get("message", ""),
                unstamp(raw.get("lastTransitionTime")) or now(),
            )
        return state
