"""Server groups, their members, asynchronous jobs and ClientToken records, with time-driven job progress.

Jobs finish by the clock, not by a background task: every access first calls ``advance(now)``, which completes
the jobs whose time has come. So state is always consistent with wall time, survives a restart from a file,
and tests can reason about it without racing a scheduler.

Connection draining follows the same clock. With ``ConnectionDrainConfig`` enabled on a group, a server whose
removal job succeeds goes ``Removing -> Draining`` at the job's end and leaves the group when its drain timeout
ends, or at once when the admin API marks it idle (no connections). Each event happens at its scheduled time,
whenever the next access notices it, and is written to the group's ``history`` with that time.
"""

from __future__ import annotations

import ipaddress
import math
import random
import uuid
from collections.abc import Callable
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
    # Adding | Available | Configuring | Removing | Draining. Draining is the emulator's own state for a server whose
    # removal succeeded while connection draining holds it; the API shows it as Behaviour.drain_status.
    status: str = "Available"
    drain_until: float | None = None  # while Draining: when the drain timeout ends
    idle: bool = False  # no connections (admin API): draining ends at once

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.server_type, self.server_id, self.port or 0, self.server_ip or "")

    def to_api(self, group_id: str, drain_status: str = "Removing") -> dict[str, Any]:
        """The server as ListServerGroupServers shows it; a draining one shows ``drain_status``."""
        out: dict[str, Any] = {
            "ServerGroupId": group_id,
            "ServerId": self.server_id,
            "ServerType": self.server_type,
            "Weight": self.weight,
            "Description": self.description,
            "RemoteIpEnabled": False,
            "Status": drain_status if self.status == "Draining" else self.status,
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
    drain_enabled: bool = False
    drain_timeout_seconds: float = 300.0  # the API's range is 0-900 whole seconds; fractions are for tests
    members: dict[str, Member] = field(default_factory=dict)  # "|".join(key) -> member
    # One record per removal: when it started, entered Draining, left the group (admin API only).
    history: list[dict[str, Any]] = field(default_factory=list)
    # One record per addition: when it was accepted (Adding) and when its job made it Available (admin API only).
    additions: list[dict[str, Any]] = field(default_factory=list)

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
            "ConnectionDrainConfig": {
                "ConnectionDrainEnabled": self.drain_enabled,
                # An integer in the API: a fractional test timeout shows rounded up.
                "ConnectionDrainTimeout": math.ceil(self.drain_timeout_seconds),
            },
        }

    def set_connection_drain(self, raw: Any) -> None:
        """``{enabled: bool, timeout_seconds: 0..900}``, either key optional; applies to drains that start later."""
        if not isinstance(raw, dict) or set(raw) - {"enabled", "timeout_seconds"}:
            raise ValueError("connection_drain takes only enabled and timeout_seconds")
        enabled = raw.get("enabled", self.drain_enabled)
        timeout = raw.get("timeout_seconds", self.drain_timeout_seconds)
        if not isinstance(enabled, bool):
            raise ValueError("connection_drain.enabled must be true or false")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 900:
            raise ValueError("connection_drain.timeout_seconds must be a number from 0 to 900")
        self.drain_enabled, self.drain_timeout_seconds = enabled, float(timeout)

    def connection_drain(self) -> dict[str, Any]:
        return {"enabled": self.drain_enabled, "timeout_seconds": self.drain_timeout_seconds}

    def record(self, member: Member, job_id: str, removing_at: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            **_identity(member),
            "job_id": job_id,
            "removing_at": removing_at,
            "draining_at": None,
            "gone_at": None,
            "out_of_rotation_at": None,  # Draining or gone, whichever came first
            "ended": None,  # drain_timeout | idle | no_draining | job_failed | readded
        }
        return _kept(self.history, entry)

    def record_addition(self, member: Member, job_id: str, adding_at: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            **_identity(member),
            "Weight": member.weight,
            "job_id": job_id,
            "adding_at": adding_at,  # the call accepted: listed Adding from then on
            "available_at": None,  # the job's end, when it succeeded: listed Available from then on
            "ended": None,  # available | job_failed
        }
        return _kept(self.additions, entry)

    def addition_of(self, mid: str, job_id: str) -> dict[str, Any] | None:
        """The record of ``mid``'s addition by job ``job_id``, if any."""
        return next((e for e in reversed(self.additions) if (e["member"], e["job_id"]) == (mid, job_id)), None)

    def open_record(self, mid: str) -> dict[str, Any] | None:
        for entry in reversed(self.history):
            if entry["member"] == mid:
                return entry if entry["ended"] is None else None
        return None


HISTORY_LIMIT = 100_000


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
    waiting_drain: bool = False  # job_ends=after_draining: done, Processing until its servers have drained

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


MAX_MISMATCHES = 10


@dataclass
class TokenRecord:
    fingerprint: str
    response: dict[str, Any] | None = None  # None while the first request is still being processed
    # Fingerprints of later requests refused with IdempotenceSignatureMismatch (the same token, other parameters):
    # a client that reuses a token for another removal, kept across restarts (admin API: GET tokens), at most 10.
    mismatched: list[str] = field(default_factory=list)

    def refused(self, fingerprint: str) -> None:
        if fingerprint not in self.mismatched and len(self.mismatched) < MAX_MISMATCHES:
            self.mismatched.append(fingerprint)


JOB_ENDS = ("before_draining", "after_draining")
# What ListServerGroupServers shows for a server that drains: Removing (the ALB SDK's status enum is Adding |
# Available | Configuring | Removing) or Draining (GWLB's RemoveServersFromServerGroup page documents it).
DRAIN_STATUSES = ("Removing", "Draining")
# The longest request target (path and query) aiohttp itself takes: past it, even a raised max_request_line is moot.
HARD_LINE_LIMIT = 1024 * 1024
# What the official SDK sends for 200 servers, the API's maximum per call, with room to spare: 34,165 bytes at
# most (200 Eni servers with full IPv6 ServerIps, port 65535, a 64-character ClientToken, the RPC signature;
# 16,691 for IPv4 Ip servers), measured through alibabacloud-alb20200616 1.3.3 (docs/emulator.md).
DEFAULT_LINE_LIMIT = 36 * 1024
# The data plane (alb_emulator.dataplane): what happens to a request in flight to a server removed without
# connection draining (UNCONFIRMED: the ALB guide's versions disagree; docs/emulator.md).
UNDRAINED_IN_FLIGHT = ("finish", "cut")
# The backends the proxy may connect to unless told otherwise: loopback only.
DEFAULT_PROXY_NETWORKS = ("127.0.0.0/8", "::1/128")


@dataclass
class Behaviour:
    job_seconds: float = 2.0
    job_jitter_seconds: float = 0.0
    # How long an AddServersToServerGroup job runs; None: job_seconds, as every other job. The jitter applies too.
    add_job_seconds: float | None = None
    max_servers_per_call: int = 40
    max_servers_per_group: int = 1000
    job_failure_rate: float = 0.0
    job_failure_code: str = "InternalError"
    # action -> (calls, seconds); an empty dict means no flow control.
    rate_limits: dict[str, tuple[int, float]] = field(default_factory=dict)
    retry_after_ms: int | None = None  # sent as x-acs-retry-after on throttling when set
    # Connection draining, where the cloud's behaviour is UNCONFIRMED (see the README): does a removal job report
    # Succeeded when its servers enter Draining, or only when they are gone; does the group stay Configuring
    # (refusing changes with IncorrectStatus.ServerGroup) while any of its servers drains.
    job_ends: str = "before_draining"  # before_draining | after_draining
    configuring_while_draining: bool = False
    # What a draining server's Status shows (UNCONFIRMED for ALB; see docs/emulator.md): Removing, as the ALB SDK's
    # enum suggests, or Draining, as GWLB documents (GWLB-like).
    drain_status: str = "Removing"
    # Requests whose target (path and query: the SDK puts a removal's servers there) is longer are refused with
    # aiohttp's own plain-text 400, before any handler runs, as aiohttp's default 8,190 did.
    max_request_line: int = DEFAULT_LINE_LIMIT
    # The data plane (alb_emulator.dataplane, docs/emulator.md "The data plane, as a model"). Does a server whose
    # removal job is still running (Removing) get new requests (UNCONFIRMED; true: new requests stop when the job
    # takes effect, Draining or gone, as history's out_of_rotation_at has it; false: from the call on).
    removing_gets_requests: bool = True
    # With a listener open on its group, a draining server with no request in flight leaves the group at once (the
    # ALB guide: the removal completes at once without in-flight requests or active connections).
    drain_ends_when_idle: bool = True
    undrained_in_flight: str = "finish"  # finish | cut: see UNDRAINED_IN_FLIGHT
    proxy_request_timeout_seconds: float = 60.0  # from the request's arrival to the backend's whole answer
    proxy_connect_timeout_seconds: float = 5.0
    # CIDRs the proxy may connect to; a server elsewhere is not connected to (counted unroutable).
    proxy_networks: list[str] = field(default_factory=lambda: list(DEFAULT_PROXY_NETWORKS))

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
        add = behaviour.add_job_seconds
        if add is not None and (isinstance(add, bool) or not isinstance(add, (int, float)) or add < 0):
            raise ValueError("add_job_seconds must be null (job_seconds) or a number of seconds, 0 or more")
        if not 1 <= behaviour.max_servers_per_call <= 200:
            raise ValueError("max_servers_per_call must be between 1 and 200")
        if behaviour.job_ends not in JOB_ENDS:
            raise ValueError(f"job_ends must be one of {', '.join(JOB_ENDS)}")
        if not isinstance(behaviour.configuring_while_draining, bool):
            raise ValueError("configuring_while_draining must be true or false")
        if behaviour.drain_status not in DRAIN_STATUSES:
            raise ValueError(f"drain_status must be one of {', '.join(DRAIN_STATUSES)}")
        limit = behaviour.max_request_line
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HARD_LINE_LIMIT:
            raise ValueError(f"max_request_line must be a whole number of bytes from 1 to {HARD_LINE_LIMIT}")
        for name in ("removing_gets_requests", "drain_ends_when_idle"):
            if not isinstance(getattr(behaviour, name), bool):
                raise ValueError(f"{name} must be true or false")
        if behaviour.undrained_in_flight not in UNDRAINED_IN_FLIGHT:
            raise ValueError(f"undrained_in_flight must be one of {', '.join(UNDRAINED_IN_FLIGHT)}")
        for name in ("proxy_request_timeout_seconds", "proxy_connect_timeout_seconds"):
            value = getattr(behaviour, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds above 0")
        networks = behaviour.proxy_networks
        if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
            raise ValueError("proxy_networks must be a list of CIDRs")
        try:
            for network in networks:
                ipaddress.ip_network(network)
        except ValueError as exc:
            raise ValueError(f"proxy_networks: {exc}") from None
        return behaviour


class State:
    def __init__(self, behaviour: Behaviour | None = None, seed: int | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.groups: dict[str, Group] = {}
        self.jobs: dict[str, Job] = {}
        self.tokens: dict[tuple[str, str], TokenRecord] = {}  # (action, ClientToken)
        self.random = random.Random(seed)
        self.draining: dict[tuple[str, str], float] = {}  # (group id, member id) -> when its drain timeout ends
        self.version = 0  # bumped on every change, so persistence knows when to write
        # Set by the data plane: (group id, member id) -> since when the server has had no request in flight, or
        # None when that is not known (a request in flight, or no listener on the group).
        self.idle_since: Callable[[str, str], float | None] | None = None

    def changed(self) -> None:
        self.version += 1

    def advance(self, now: float) -> None:
        """Finishes every job whose time has come, then ends the drains whose time has come, each at its time."""
        touched: set[str] = set()
        due = [j for j in self.jobs.values() if j.status == "Processing" and not j.waiting_drain and j.finish_at <= now]
        for job in sorted(due, key=lambda j: j.finish_at):
            self._finish(job, now)
            touched.add(job.group_id)
        for (group_id, mid), until in sorted(self.draining.items(), key=lambda item: item[1]):
            if until <= now:
                self._drained(group_id, mid, until, "drain_timeout")
                touched.add(group_id)
        if touched:
            self._settle(touched)

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
                record = group.open_record(mid)
                if job.status == "Succeeded" and group.drain_enabled and mid in group.members:
                    self._start_draining(group, group.members[mid], record, job.finish_at)
                elif job.status == "Succeeded":
                    group.members.pop(mid, None)
                    if record is not None:
                        record.update(gone_at=job.finish_at, out_of_rotation_at=job.finish_at, ended="no_draining")
                else:
                    if mid in group.members:
                        group.members[mid].status = "Available"
                    if record is not None:
                        record["ended"] = "job_failed"
            for member in job.add:
                addition = group.addition_of(member_id(member), job.id)
                if addition is not None:
                    addition.update(
                        available_at=job.finish_at if job.status == "Succeeded" else None,
                        ended="available" if job.status == "Succeeded" else "job_failed",
                    )
                if job.status == "Succeeded":
                    member.status = "Available"
                    group.members[member_id(member)] = member
                elif (old := group.members.get(member_id(member))) is not None and old.status == "Adding":
                    group.members.pop(member_id(member))  # re-added while Draining, and the add failed
            if (
                job.status == "Succeeded"
                and self.behaviour.job_ends == "after_draining"
                and any((m := group.members.get(mid)) is not None and m.status == "Draining" for mid in job.remove)
            ):
                job.status = "Processing"
                job.waiting_drain = True
        self.changed()

    def _start_draining(self, group: Group, member: Member, record: dict[str, Any] | None, at: float) -> None:
        member.status = "Draining"
        member.drain_until = at + group.drain_timeout_seconds
        if record is not None:
            record.update(draining_at=at, out_of_rotation_at=at)
        mid = member_id(member)
        self.draining[(group.id, mid)] = member.drain_until
        if member.idle or group.drain_timeout_seconds <= 0:
            self._drained(group.id, mid, at, "idle" if member.idle else "drain_timeout")
            return
        since = self.idle_since(group.id, mid) if self.idle_since and self.behaviour.drain_ends_when_idle else None
        if since is not None:  # no request in flight through the proxy: the removal completes at once
            self._drained(group.id, mid, max(at, since), "idle")

    def _drained(self, group_id: str, mid: str, at: float, why: str) -> None:
        """Draining ends at ``at``: the server leaves the group."""
        self.draining.pop((group_id, mid), None)
        group = self.groups.get(group_id)
        member = group.members.get(mid) if group else None
        if group is None or member is None or member.status != "Draining":
            return
        del group.members[mid]
        record = group.open_record(mid)
        if record is not None:
            record.update(gone_at=at, ended=why)
        self.changed()

    def end_drain(self, group: Group, member: Member, now: float, why: str) -> None:
        """Draining cut short: idle (gone now), or re-added (Draining -> Adding, the server never left)."""
        mid = member_id(member)
        if why == "readded":
            self.draining.pop((group.id, mid), None)
            member.status, member.drain_until = "Adding", None
            record = group.open_record(mid)
            if record is not None:
                record["ended"] = "readded"
            self.changed()
        else:
            self._drained(group.id, mid, now, why)
        self._settle({group.id})

    def _settle(self, group_ids: set[str]) -> None:
        """Jobs waiting for drains that are over end; groups with nothing under way become Available."""
        for job in self.jobs.values():
            if job.waiting_drain and job.status == "Processing" and job.group_id in group_ids:
                group = self.groups.get(job.group_id)
                if group is None or not any(
                    (m := group.members.get(mid)) is not None and m.status == "Draining" for mid in job.remove
                ):
                    ended = [
                        r["gone_at"] or r["draining_at"] or 0.0
                        for r in (group.history if group else [])
                        if r["job_id"] == job.id
                    ]
                    job.status, job.waiting_drain = "Succeeded", False
                    job.modified_ms = int(max(ended, default=job.finish_at) * 1000)
                    self.changed()
        for group_id in group_ids:
            group = self.groups.get(group_id)
            if group is None or group.status not in ("Configuring", "Available"):
                continue
            busy = any(
                j.status == "Processing" and not j.waiting_drain and j.group_id == group_id for j in self.jobs.values()
            ) or (
                self.behaviour.configuring_while_draining
                and any(m.status == "Draining" for m in group.members.values())
            )
            status = "Configuring" if busy else "Available"
            if status != group.status:
                group.status = status
                self.changed()

    def mark_idle(self, group: Group, server_ids: list[str] | None, now: float) -> dict[str, list[str]]:
        """Marks servers idle (all when ``server_ids`` is None); those Draining leave the group now."""
        self.advance(now)
        marked: list[str] = []
        ended: list[str] = []
        for member in list(group.members.values()):
            if server_ids is not None and member.server_id not in server_ids:
                continue
            member.idle = True
            marked.append(member.server_id)
            if member.status == "Draining":
                self._drained(group.id, member_id(member), now, "idle")
                ended.append(member.server_id)
        self._settle({group.id})
        self.changed()
        return {"idle": marked, "drain_ended": ended}

    def forget_drains(self) -> None:
        self.draining.clear()

    def start_job(self, api_name: str, group: Group, now: float, remove: list[str], add: list[Member]) -> Job:
        b = self.behaviour
        seconds = b.job_seconds
        if api_name == "AddServersToServerGroup" and b.add_job_seconds is not None:
            seconds = b.add_job_seconds
        duration = seconds + (self.random.uniform(0, b.job_jitter_seconds) if b.job_jitter_seconds else 0)
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
            group.record(group.members[mid], job.id, now)
        for member in add:
            group.record_addition(member, job.id, now)
        if duration <= 0:
            self._finish(job, now)
            self._settle({group.id})
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
            for mid, m in group.members.items():
                if m.status == "Draining" and m.drain_until is not None:
                    self.draining[(group.id, mid)] = m.drain_until
        for j in raw.get("jobs", []):
            j["add"] = [Member(**m) for m in j.get("add", [])]
            j["fail_with"] = tuple(j["fail_with"]) if j.get("fail_with") else None
            job = Job(**j)
            self.jobs[job.id] = job
        for t in raw.get("tokens", []):
            self.tokens[(t["action"], t["token"])] = TokenRecord(
                fingerprint=t["fingerprint"], response=t["response"], mismatched=list(t.get("mismatched", []))
            )


def _identity(member: Member) -> dict[str, Any]:
    """A record's server, as the cloud lists it, and the member id that tells servers of one ServerId apart."""
    return {
        "ServerId": member.server_id,
        "ServerType": member.server_type,
        "Port": member.port,
        "ServerIp": member.server_ip,
        "member": member_id(member),
    }


def _kept(records: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` appended to a group's records, the oldest dropped past HISTORY_LIMIT."""
    records.append(entry)
    if len(records) > HISTORY_LIMIT:
        del records[: len(records) - HISTORY_LIMIT]
    return entry
