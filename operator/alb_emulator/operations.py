"""The ALB operations the emulator serves, with the cloud's validation, idempotency and dry-run rules.

A write goes through two steps so that a slow request (injected latency) is observable as in flight:
``prepare`` validates it and claims its ClientToken, ``complete`` performs it. A second request with the
same token arriving in between is answered ``IdempotenceProcessing``, as the cloud does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alb_emulator.errors import error
from alb_emulator.params import parse_bool, parse_int, required
from alb_emulator.state import Group, Member, State, TokenRecord, member_id

SERVER_TYPES = ("Ecs", "Eni", "Eci", "Ip", "Fc")
PORT_REQUIRED = frozenset({"Ecs", "Eni", "Eci", "Ip"})
GROUP_ACCEPTS = {"Ip": {"Ip"}, "Instance": {"Ecs", "Eni", "Eci"}, "Fc": {"Fc"}}
MAX_JOB_IDS = 20
WRITES = ("RemoveServersFromServerGroup", "AddServersToServerGroup", "ReplaceServersInServerGroup")
READS = ("ListServerGroupServers", "ListServerGroups", "ListAsynJobs")
ACTIONS = WRITES + READS


@dataclass
class Prepared:
    action: str
    params: dict[str, Any]
    token_key: tuple[str, str] | None = None
    cached: dict[str, Any] | None = None


def parse_servers(raw: Any, name: str, limit: int) -> list[Member]:
    if not isinstance(raw, list) or not raw:
        raise error("MissingParameter", f"The input parameter {name} that is mandatory is not supplied.")
    if len(raw) > limit:
        raise error("IllegalParam.Servers", f"The number of {name} ({len(raw)}) exceeds {limit} per call.")
    members: list[Member] = []
    seen: set[tuple[str, str, int, str]] = set()
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise error("MissingParameter", f"{name}.{i} must have ServerId and ServerType.")
        where = f"{name}.{i}"
        server_type = item.get("ServerType")
        if server_type not in SERVER_TYPES:
            raise error(
                "IllegalParam.ServerType",
                f"{where}.ServerType {server_type!r} is not one of {', '.join(SERVER_TYPES)}.",
            )
        server_id = item.get("ServerId")
        if not server_id:
            raise error("MissingParameter", f"The input parameter {where}.ServerId is not supplied.")
        port: int | None = None
        if item.get("Port") not in (None, ""):
            port = parse_int(item["Port"], f"{where}.Port", 0, 1, 65535, "IllegalParam.Port")
        elif server_type in PORT_REQUIRED:
            raise error("IllegalParam.Port", f"{where}.Port is mandatory for ServerType {server_type}.")
        weight = parse_int(item.get("Weight"), f"{where}.Weight", 100, 0, 100, "IllegalParam.Weight")
        member = Member(
            server_id=server_id,
            server_type=server_type,
            port=port,
            server_ip=item.get("ServerIp") or None,
            weight=weight,
            description=item.get("Description", ""),
        )
        if member.key in seen:
            raise error("DuplicatedParam.Server", f"{where} repeats a server given earlier in {name}.")
        seen.add(member.key)
        members.append(member)
    return members


def check_client_token(token: str | None) -> None:
    if token is not None and (len(token) > 64 or not token.isascii()):
        raise error("IllegalParam.ClientToken", "ClientToken must be ASCII and at most 64 characters.")


def page(items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
    size = parse_int(params.get("MaxResults"), "MaxResults", 20, 1, 100, "IllegalParam.MaxResults")
    raw_token = params.get("NextToken") or ""
    try:
        start = int(base64.urlsafe_b64decode(raw_token.encode()).decode()) if raw_token else 0
    except ValueError:
        raise error("IllegalParam.NextToken", f"NextToken {raw_token!r} is not valid.") from None
    chunk = items[start : start + size]
    out: dict[str, Any] = {"MaxResults": size, "TotalCount": len(items), key: chunk}
    if start + size < len(items):
        out["NextToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    else:
        out["NextToken"] = ""
    return out


class Operations:
    def __init__(self, state: State) -> None:
        self.state = state
        self._writers: dict[str, Callable[[dict[str, Any], float, bool], dict[str, Any]]] = {
            "RemoveServersFromServerGroup": self._remove,
            "AddServersToServerGroup": self._add,
            "ReplaceServersInServerGroup": self._replace,
        }
        self._readers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ListServerGroupServers": self._list_servers,
            "ListServerGroups": self._list_groups,
            "ListAsynJobs": self._list_jobs,
        }

    def prepare(self, action: str, params: dict[str, Any]) -> Prepared:
        if action not in ACTIONS:
            raise error("InvalidAction.NotFound", f"Specified api {action!r} is not found.")
        prepared = Prepared(action=action, params=params)
        if action not in WRITES:
            return prepared
        token = params.get("ClientToken") or None
        check_client_token(token)
        if token is None or parse_bool(params.get("DryRun"), "DryRun"):
            return prepared
        fingerprint = json.dumps(
            {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}, sort_keys=True
        )
        key = (action, token)
        record = self.state.tokens.get(key)
        if record is not None:
            if record.fingerprint != fingerprint:
                record.refused(fingerprint)
                self.state.changed()
                raise error(
                    "IdempotenceSignatureMismatch",
                    "The ClientToken was used before with other parameters.",
                )
            if record.response is None:
                raise error("IdempotenceProcessing", "A request with the same ClientToken is being processed.")
            prepared.cached = record.response
            return prepared
        self.state.tokens[key] = TokenRecord(fingerprint=fingerprint)
        prepared.token_key = key
        return prepared

    def complete(self, prepared: Prepared, now: float) -> dict[str, Any]:
        if prepared.cached is not None:
            return dict(prepared.cached)
        self.state.advance(now)
        try:
            if prepared.action in self._readers:
                return self._readers[prepared.action](prepared.params)
            dry_run = parse_bool(prepared.params.get("DryRun"), "DryRun")
            response = self._writers[prepared.action](prepared.params, now, dry_run)
        except BaseException:
            self.abandon(prepared)
            raise
        if prepared.token_key is not None:
            self.state.tokens[prepared.token_key].response = response
            self.state.changed()
        return dict(response)

    def abandon(self, prepared: Prepared) -> None:
        """A request that failed does not use up its ClientToken."""
        if prepared.token_key is not None:
            self.state.tokens.pop(prepared.token_key, None)

    # -- writes --------------------------------------------------------------------------------------------

    def _group_for_change(self, params: dict[str, Any], servers: list[Member]) -> Group:
        group_id = required(params, "ServerGroupId")
        group = self.state.groups.get(group_id)
        if group is None:
            raise error("ResourceNotFound.ServerGroup", f"The specified resource {group_id} is not found.")
        accepted = GROUP_ACCEPTS.get(group.type, set(SERVER_TYPES))
        for s in servers:
            if s.server_type not in accepted:
                raise error(
                    "Mismatch.ServerType",
                    f"ServerType {s.server_type} cannot join {group.type} group {group.id}.",
                )
        if group.status != "Available":
            raise error("IncorrectStatus.ServerGroup", f"The status of ServerGroup [{group.id}] is incorrect.")
        return group

    def _existing(self, group: Group, servers: list[Member]) -> list[str]:
        """A server that is Draining has been removed already: removing it again finds nothing (UNCONFIRMED)."""
        ids = []
        for s in servers:
            found = group.find(s)
            if found is None or found.status == "Draining":
                raise error("ResourceNotFound.BackendServer", f"The specified resource {s.server_id} is not found.")
            ids.append(member_id(found))
        return ids

    def _check_new(self, group: Group, servers: list[Member], leaving: int = 0) -> None:
        """A server that is Draining may be added again (Draining -> Adding -> Available, as GWLB documents)."""
        for s in servers:
            found = group.find(s)
            if found is not None and found.status != "Draining":
                raise error(
                    "ResourceAlreadyAssociated.BackendServer",
                    f"The backend server {s.server_id} is already in ServerGroup {group.id}.",
                )
        limit = self.state.behaviour.max_servers_per_group
        staying = sum(1 for m in group.members.values() if m.status != "Draining")
        if staying - leaving + len(servers) > limit:
            raise error("QuotaExceeded.ServersNum", f"ServerGroup {group.id} would exceed {limit} servers.")

    def _submit(
        self, action: str, group: Group, now: float, dry_run: bool, remove: list[str], add: list[Member]
    ) -> dict[str, Any]:
        if dry_run:
            raise error("DryRunOperation")
        for m in add:
            m.status = "Adding"
            draining = group.find(m)
            if draining is not None and draining.status == "Draining":
                self.state.end_drain(group, draining, now, "readded")
            else:  # listed as Adding (with its Weight) while the job runs, as the cloud documents
                group.members[member_id(m)] = m
        job = self.state.start_job(action, group, now, remove, add)
        return {"JobId": job.id}

    def _remove(self, params: dict[str, Any], now: float, dry_run: bool) -> dict[str, Any]:
        servers = parse_servers(params.get("Servers"), "Servers", self.state.behaviour.max_servers_per_call)
        group = self._group_for_change(params, servers)
        return self._submit("RemoveServersFromServerGroup", group, now, dry_run, self._existing(group, servers), [])

    def _add(self, params: dict[str, Any], now: float, dry_run: bool) -> dict[str, Any]:
        servers = parse_servers(params.get("Servers"), "Servers", self.state.behaviour.max_servers_per_call)
        group = self._group_for_change(params, servers)
        self._check_new(group, servers)
        return self._submit("AddServersToServerGroup", group, now, dry_run, [], servers)

    def _replace(self, params: dict[str, Any], now: float, dry_run: bool) -> dict[str, Any]:
        limit = self.state.behaviour.max_servers_per_call
        removed = parse_servers(params.get("RemovedServers"), "RemovedServers", limit)
        added = parse_servers(params.get("AddedServers"), "AddedServers", limit)
        group = self._group_for_change(params, removed + added)
        remove = self._existing(group, removed)
        self._check_new(group, added, leaving=len(remove))
        return self._submit("ReplaceServersInServerGroup", group, now, dry_run, remove, added)

    # -- reads ---------------------------------------------------------------------------------------------

    def _list_servers(self, params: dict[str, Any]) -> dict[str, Any]:
        group = self.state.groups.get(params.get("ServerGroupId") or "")
        members = list(group.members.values()) if group else []
        wanted = set(params.get("ServerIds") or [])
        shown = self.state.behaviour.drain_status
        items = [m.to_api(group.id, shown) for m in members if not wanted or m.server_id in wanted] if group else []
        return page(items, params, "Servers")

    def _list_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = set(params.get("ServerGroupIds") or [])
        names = set(params.get("ServerGroupNames") or [])
        kind = params.get("ServerGroupType")
        items = [
            g.to_api()
            for g in self.state.groups.values()
            if (not ids or g.id in ids) and (not names or (g.name or g.id) in names) and (not kind or g.type == kind)
        ]
        return page(items, params, "ServerGroups")

    def _list_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        job_ids = params.get("JobIds") or []
        if len(job_ids) > MAX_JOB_IDS:
            raise error("IllegalParam.JobIds", f"At most {MAX_JOB_IDS} JobIds may be given, not {len(job_ids)}.")
        resource_ids = set(params.get("ResourceIds") or [])
        api_name = params.get("ApiName")
        begin = parse_int(params.get("BeginTime"), "BeginTime", 0, 0, 2**63 - 1, "IllegalParam.BeginTime")
        end = parse_int(params.get("EndTime"), "EndTime", 2**63 - 1, 0, 2**63 - 1, "IllegalParam.EndTime")
        jobs = (
            [self.state.jobs[j] for j in job_ids if j in self.state.jobs] if job_ids else list(self.state.jobs.values())
        )
        items = [
            j.to_api()
            for j in jobs
            if (not resource_ids or j.group_id in resource_ids)
            and (not api_name or j.api_name == api_name)
            and begin <= j.created_ms <= end
        ]
        return page(items, params, "Jobs")
