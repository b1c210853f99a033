"""What the operator keeps of one ServerGroupMembership besides its group's ledger: spec, job history,
conditions and counters. Members and pending removals live in the ledger (alb_membership.model.ledger)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from alb_membership.model.ledger import GroupKey, now
from alb_membership.model.spec import Ref, Spec

MAX_JOBS = 20
MAX_JOB_SERVERS_SHOWN = 10  # a job's server list in status; serverCount has them all
MAX_DRAINING_SHOWN = 200


def stamp(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when else None


def unstamp(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


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
    server_count: int | None = None  # when only the first servers are kept

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobId": self.job_id,
            "clientToken": self.client_token,
            "servers": self.servers[:MAX_JOB_SERVERS_SHOWN],
            "serverCount": self.server_count or len(self.servers),
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
        servers = list(raw.get("servers", []))
        return cls(
            job_id=raw.get("jobId", ""),
            client_token=raw.get("clientToken", ""),
            servers=servers,
            server_count=int(raw.get("serverCount") or len(servers)),
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
class ResourceState:
    ref: Ref
    spec: Spec
    group: GroupKey
    generation: int = 0
    jobs: list[JobRecord] = field(default_factory=list)
    conditions: dict[str, Condition] = field(default_factory=dict)
    removed_count: int = 0
    deleting: bool = False
    group_not_found: bool = False  # the cloud answered ResourceNotFound.ServerGroup to this process (not restored)
    # Servers removed from a group with connection draining: out of rotation, Draining until at most then.
    draining: dict[str, dt.datetime] = field(default_factory=dict)
    # Members that cannot be turned into a server (pod name -> why), as last seen: bounded by the members.
    unmappable: dict[str, str] = field(default_factory=dict)

    def drained(self, servers: list[str], until: dt.datetime) -> None:
        for server in servers:
            self.draining[server] = until
        while len(self.draining) > MAX_DRAINING_SHOWN:
            del self.draining[min(self.draining, key=lambda s: self.draining[s])]

    def still_draining(self) -> dict[str, str]:
        now_ = now()
        self.draining = {s: until for s, until in self.draining.items() if until > now_}
        return {s: until.strftime("%Y-%m-%dT%H:%M:%SZ") for s, until in sorted(self.draining.items())}

    def add_job(self, job: JobRecord) -> None:
        if any(j.job_id == job.job_id and job.job_id for j in self.jobs):
            return  # a re-sent call returns the job already recorded
        self.jobs.insert(0, job)
        del self.jobs[MAX_JOBS:]

    def job_finished(self, job_id: str, status: str, error: str | None) -> None:
        for record in self.jobs:
            if record.job_id == job_id:
                record.status, record.finished_at, record.error = status, now(), error

    def set_condition(self, kind: str, status: str, reason: str, message: str) -> None:
        old = self.conditions.get(kind)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return
        since = old.since if old and old.status == status else now()
        self.conditions[kind] = Condition(status, reason, message, since)

    def conditions_status(self) -> list[dict[str, Any]]:
        return [
            {
                "type": kind,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": c.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "observedGeneration": self.generation,
            }
            for kind, c in sorted(self.conditions.items())
        ]

    def restore(self, status: dict[str, Any]) -> None:
        self.jobs = [JobRecord.from_status(raw) for raw in status.get("jobs") or []]
        self.removed_count = int(status.get("removedCount") or 0)
        for raw in status.get("conditions") or []:
            self.conditions[raw["type"]] = Condition(
                raw["status"],
                raw.get("reason", ""),
                raw.get("message", ""),
                unstamp(raw.get("lastTransitionTime")) or now(),
            )
