"""Server groups, their members, asynchronous jobs and ClientToken records, with time-driven job progress.

Jobs finish by the clock, not by a background task: every access first calls ``advance(now)``, which completes
the jobs whose time has come. So state is always consistent with wall time, survives a restart from a file,
and tests can reason about it without racing a scheduler.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Member:
    server_id: str
    server_type: str
    port: int | None = None
    server_ip: str | None = None
    weight: int = 100
    description: str = ""
    status: str = "Available"  # Adding | Available | Configuring | Removing

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.server_type, self.server_id, self.port or 0, self.server_ip or "")

    def to_api(self, group_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ServerGroupId": group_id,
            "ServerId": self.server_id,
            "ServerType": self.server_type,
            "Weight": self.weight,
            "Description": self.description,
            "RemoteIpEnabled": False,
            "Status": self.status,
        }
        if self.port is not None:
            out["Port"] = self.port
        out["ServerIp"] = self.server_ip or (self.server_id if self.server_type == "Ip" else "")
        return out


@dataclass
class Group:
    id: str
    type: str = "Ip"  # Instance | Ip | Fc
    name: str = ""
    status: str = "Available"  # Creating | Available | Configuring
    vpc_id: str = "vpc-emulator"
    members: dict[str, Member] = field(default_factory=dict)  # "|".join(key) -> member

    def find(self, wanted: Member) -> Member | None:
        """A member matches on type, id and port; ServerIp only when the request gives one."""
        for member in self.members.values():
            if member.key[:3] == wanted.key[:3] and (not wanted.server_ip or member.server_ip == wanted.server_ip):
                return member
        return None

    def to_api(self) -> dict[str, Any]:
        return {
            "ServerGroupId": self.id,
            "ServerGroupName": self.name or self.id,
            "ServerGroupType": self.type,
            "ServerGroupStatus": self.status,
            "Protocol": "HTTP",
            "Scheduler": "Wrr",
            "VpcId": self.vpc_id,
            "ServerCount": len(self.members),
            "RelatedLoadBalancerIds": [],
            "Tags": [],
        }


def member_id(member: Member) -> str:
    return "|".join(str(part) for part in member.key)


@dataclass
class Job:
    id: str
    api_name: str
    group_id: str
    created_ms: int
    finish_at: float
    remove: list[str] = field(default_factory=list)  # member ids
    add: list[Member] = field(default_factory=list)
    status: str = "Processing"
    modified_ms: int = 0
    fail_with: tuple[str, str] | None = None  # decided at submission by the failure knob
    error_code: str | None = None
    error_message: str | None = None

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Id": self.id,
            "ApiName": self.api_name,
            "ResourceType": "servergroup",
            "ResourceId": self.group_id,
            "OperateType": "Update",
            "Status": self.status,
            "CreateTime": self.created_ms,
            "ModifyTime": self.modified_ms or self.created_ms,
        }
        if self.error_code:
            out["ErrorCode"] = self.error_code
            out["ErrorMessage"] = self.error_message
        return out


@dataclass
class TokenRecord:
    fingerprint: str
    response: dict[str, Any] | None = None  # None while the first request is still being processed


@dataclass
class Behaviour:
    job_seconds: float = 2.0
    job_jitter_seconds: float = 0.0
    max_servers_per_call: int = 40
    max_servers_per_group: int = 1000
    job_failure_rate: float = 0.0
    job_failure_code: str = "InternalError"
    # action -> (calls, seconds); an empty dict means no flow control.
    rate_limits: dict[str, tuple[int, float]] = field(default_factory=dict)
    retry_after_ms: int | None = None  # sent as x-acs-retry-after on throttling when set

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> Behaviour:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown behaviour setting(s): {', '.join(sorted(unknown))}")
        values = dict(raw)
        if "rate_limits" in values:
            values["rate_limits"] = {a: (int(c), float(p)) for a, (c, p) in values["rate_limits"].items()}
        behaviour = cls(**values)
        if not 1 <= behaviour.max_servers_per_call <= 200:
            raise ValueError("max_servers_per_call must be between 1 and 200")
        return behaviour


class State:
    def __init__(self, behaviour: Behaviour | None = None, seed: int | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.groups: dict[str, Group] = {}
        self.jobs: dict[str, Job] = {}
        self.tokens: dict[tuple[str, str], TokenRecord] = {}  # (action, ClientToken)
        self.random = random.Random(seed)
        self.version = 0  # bumped on every change, so persistence knows when to write

    def changed(self) -> None:
        self.version += 1

    def advance(self, now: float) -> None:
        """Finishes every job whose time has come."""
        for job in self.jobs.values():
            if job.status == "Processing" and job.finish_at <= now:
                self._finish(job, now)

    def _finish(self, job: Job, now: float) -> None:
        group = self.groups.get(job.group_id)
        job.modified_ms = int(now * 1000)
        if job.fail_with:
            job.status = "Failed"
            job.error_code, job.error_message = job.fail_with
        else:
            job.status = "Succeeded"
        if group is not None:
            for mid in job.remove:
                if job.status == "Succeeded":
                    group.members.pop(mid, None)
                elif mid in group.members:
                    group.members[mid].status = "Available"
            for member in job.add:
                if job.status == "Succeeded":
                    member.status = "Available"
                    group.members[member_id(member)] = member
            if not any(j.status == "Processing" and j.group_id == group.id for j in self.jobs.values()):
                group.status = "Available"
        self.changed()

    def start_job(self, api_name: str, group: Group, now: float, remove: list[str], add: list[Member]) -> Job:
        b = self.behaviour
        duration = b.job_seconds + (self.random.uniform(0, b.job_jitter_seconds) if b.job_jitter_seconds else 0)
        fail = self.random.random() < b.job_failure_rate
        job = Job(
            id=str(uuid.UUID(int=self.random.getrandbits(128), version=4)),
            api_name=api_name,
            group_id=group.id,
            created_ms=int(now * 1000),
            finish_at=now + duration,
            remove=remove,
            add=add,
            fail_with=(b.job_failure_code, f"The job failed ({b.job_failure_code}).") if fail else None,
        )
        self.jobs[job.id] = job
        group.status = "Configuring"
        for mid in remove:
            group.members[mid].status = "Removing"
        if duration <= 0:
            self._finish(job, now)
        self.changed()
        return job

    # -- persistence -----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [
                {
                    **{k: v for k, v in asdict(g).items() if k != "members"},
                    "members": list(map(asdict, g.members.values())),
                }
                for g in self.groups.values()
            ],
            "jobs": [asdict(j) for j in self.jobs.values()],
            "tokens": [{"action": a, "token": t, **asdict(r)} for (a, t), r in self.tokens.items() if r.response],
        }

    def load_json(self, raw: dict[str, Any]) -> None:
        for g in raw.get("groups", []):
            members = [Member(**m) for m in g.pop("members", [])]
            group = Group(**g)
            group.members = {member_id(m): m for m in members}
            self.groups[group.id] = group
        for j in raw.get("jobs", []):
            j["add"] = [Member(**m) for m in j.get("add", [])]
            j["fail_with"] = tuple(j["fail_with"]) if j.get("fail_with") else None
            job = Job(**j)
            self.jobs[job.id] = job
        for t in raw.get("tokens", []):
            self.tokens[(t["action"], t["token"])] = TokenRecord(fingerprint=t["fingerprint"], response=t["response"])
