"""A resource's status as the ledger and the resource state show it, and back.

Members and pending removals are maps (owner id -> member, server -> removal), so that a JSON merge patch of the
difference touches only what changed. Status holds live members, pending removals and at most MAX_JOBS jobs:
its size follows the workload's size now, never its history (PRODUCT.md 3.9).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.model.ledger import Addition, Change, GroupLedger, OwnerKey, Removal, now
from alb_membership.model.state import ResourceState, unstamp

# Beyond this many bytes of members and pending removals together, status records only part of them (etcd
# refuses objects over 1.5 MiB). Removals whose token was written ahead of a call come first, then the other
# pending removals, then live members. What does not fit is protected while this operator runs, not across a
# restart, and a condition says so.
STATUS_BUDGET_BYTES = 900 * 1024

log = logging.getLogger(__name__)


def source_of(owner_id: str) -> str:
    return "static" if owner_id.startswith("static/") else "endpoint" if owner_id.startswith("endpoint/") else "pod"


def members_status(ledger: GroupLedger, uid: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for owner_id in ledger.owner_ids(uid):
        owner = ledger.owner((uid, owner_id))
        server = ledger.server_of((uid, owner_id))
        if owner is None or server is None or owner.leaving:
            continue
        member: dict[str, Any] = {"server": server.compact, "source": owner.source}
        if owner.name:
            member["pod"] = owner.name
        in_group = ledger.entries[server].in_group
        if in_group is not None:
            member["inGroup"] = in_group
        out[owner_id] = member
    return out


def pending_status(ledger: GroupLedger, uid: str) -> dict[str, dict[str, Any]]:
    """Removals (their leaving owners) and additions (``action: add``, their live owners), keyed by server.
    Compact (about 100 bytes a removal, 200 with its token and job): a mass removal must fit too."""
    out: dict[str, dict[str, Any]] = {}
    for owner_id in ledger.owner_ids(uid):
        owner = ledger.owner((uid, owner_id))
        server = ledger.server_of((uid, owner_id))
        if owner is None or server is None:
            continue
        entry = ledger.entries[server]
        change: Change | None = entry.removal if owner.leaving else entry.addition
        if change is None:
            continue
        item = out.get(server.compact)
        if item is None:
            item = out[server.compact] = _change_status(change)
        item["owners"].append(owner_id)
    return out


def _change_status(change: Change) -> dict[str, Any]:
    out: dict[str, Any] = {"owners": [], "trigger": change.trigger, "decidedAt": decided_stamp(change.decided_at)}
    if isinstance(change, Addition):
        out["action"] = "add"
        out["weight"] = change.weight
    if change.attempt:
        out["attempt"] = change.attempt
    if change.client_token:
        out["clientToken"] = change.client_token
    if change.job_id:
        out["jobId"] = change.job_id
    if change.refused:
        out["refused"] = change.refused
    if isinstance(change, Removal):
        if change.weight is not None:
            out["weight"] = change.weight  # what an undo puts it back with
        # The deletion gate's word on the pod's deletion, for albm_exposure_seconds after a takeover: short keys,
        # present only when set (a mass removal without the gate costs nothing more).
        if change.exposed_since is not None:
            out["exposedAt"] = decided_stamp(change.exposed_since)
        if change.held_out:
            out["heldOut"] = True
    return out


def decided_stamp(when: dt.datetime) -> str:
    """To the millisecond: the decision's time is also what tells one removal of an owner from an earlier one in
    its ClientToken (engine/batches.py), so status must give a successor the same value."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _size(key: str, value: Any) -> int:
    return len(json.dumps({key: value})) - 1  # as one more entry of a map: its key, value and a separator


def fit(
    pending: dict[str, dict[str, Any]], members: dict[str, dict[str, Any]], budget: int
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """What of ``pending`` and ``members`` fits in ``budget`` bytes of JSON, in that order of importance."""
    if len(json.dumps(pending)) + len(json.dumps(members)) <= budget:
        return pending, members
    kept_pending: dict[str, dict[str, Any]] = {}
    kept_members: dict[str, dict[str, Any]] = {}
    used = 4
    ordered = sorted(pending.items(), key=lambda kv: "clientToken" not in kv[1])
    for target, items in ((kept_pending, ordered), (kept_members, sorted(members.items()))):
        for key, value in items:
            used += _size(key, value)
            if used > budget:
                return kept_pending, kept_members
            target[key] = value
    return kept_pending, kept_members


def to_status(state: ResourceState, ledger: GroupLedger, budget: int = STATUS_BUDGET_BYTES) -> dict[str, Any]:
    members = members_status(ledger, state.ref.uid)
    pending = pending_status(ledger, state.ref.uid)
    kept_pending, kept_members = fit(pending, members, budget)
    if len(kept_members) < len(members) or len(kept_pending) < len(pending):
        state.set_condition(
            "StatusComplete",
            "False",
            "StatusBudgetExceeded",
            f"{len(kept_members)} of {len(members)} live members and {len(kept_pending)} of {len(pending)} pending "
            "removals fit in status; the rest are protected while this operator runs but not across a restart: "
            "split the resource (e.g. by label) into smaller ones",
        )
    else:
        state.conditions.pop("StatusComplete", None)
    servers = {m["server"]: m.get("inGroup") for m in members.values()}
    return {
        "observedGeneration": state.generation,
        # Servers, not owners: a pod picked by both podSelector and serviceRef is one server of the group.
        "memberCount": len(servers),
        **_in_rotation(servers),
        "pendingCount": len(pending),
        "removedCount": state.removed_count,
        "lastJob": f"{state.jobs[0].job_id or '-'} {state.jobs[0].status}" if state.jobs else "",
        "members": kept_members,
        "pending": kept_pending,
        "draining": state.still_draining(),
        "jobs": [j.to_status() for j in state.jobs],
        "conditions": state.conditions_status(),
    }


def _in_rotation(servers: dict[str, str | None]) -> dict[str, int]:
    """Members' servers the group shows Available; absent while nothing was read of any (remove-only resources
    whose group is never read for them): an unknown is not a 0."""
    if all(in_group is None for in_group in servers.values()):
        return {}
    return {"inRotationCount": sum(1 for in_group in servers.values() if in_group == "Available")}


def restore(ledger: GroupLedger, uid: str, status: dict[str, Any]) -> list[Server]:
    """Puts what an earlier operator recorded into the ledger; returns the servers with removals to send again.
    Reads the list form of operator 0.1 too (members with a phase, pending with an id), so an upgrade keeps
    its pending removals. A record that cannot be read is skipped with a warning: one bad record must not keep
    the whole resource (its other members and removals, its finalizer) from loading."""
    members = status.get("members") or {}
    if isinstance(members, list):
        members = {
            m["id"]: {**m, "server": Server.from_status(m["server"]).compact}
            for m in members
            if m.get("phase", "Active") == "Active"
        }
    for owner_id, raw in members.items():
        server = _server(raw.get("server"), uid, owner_id)
        if server is not None:
            ledger.hold((uid, owner_id), server, raw.get("source", "pod"), raw.get("pod"))
            if raw.get("inGroup"):
                ledger.seen_in_group(server, str(raw["inGroup"]), None)
    pending = status.get("pending") or {}
    if isinstance(pending, list):
        pending = {Server.from_status(p["server"]).compact: {**p, "owners": [p["id"]]} for p in pending}
    servers = []
    for compact, raw in pending.items():
        server = _server(compact, uid, "pending")
        if server is None:
            continue
        common: dict[str, Any] = {
            "trigger": raw.get("trigger", "unknown"),
            "decided_at": unstamp(raw.get("decidedAt")) or now(),
            "attempt": int(raw.get("attempt", 0)),
            "client_token": raw.get("clientToken"),
            "job_id": raw.get("jobId"),
            "refused": int(raw.get("refused", 0)),
        }
        weight = int(raw["weight"]) if raw.get("weight") is not None else None
        change: Change = (
            Addition(**common, weight=weight if weight is not None else 100)
            if raw.get("action") == "add"
            else Removal(
                **common,
                weight=weight,
                exposed_since=unstamp(raw.get("exposedAt")),
                held_out=raw.get("heldOut") is True,
            )
        )
        for owner_id in raw.get("owners") or []:
            key: OwnerKey = (uid, owner_id)
            if isinstance(change, Addition):
                name = (members.get(owner_id) or {}).get("pod")
                ledger.restore_addition(key, server, source_of(owner_id), name, change)
            elif isinstance(change, Removal):
                ledger.restore(key, server, source_of(owner_id), None, change)
        servers.append(server)
    return servers


def _server(compact: Any, uid: str, record: str) -> Server | None:
    try:
        return Server.parse(str(compact))
    except ValueError as exc:
        log.warning("resource %s: status record %s is skipped: %s", uid, record, exc)
        return None
