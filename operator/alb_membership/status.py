"""A resource's status as the ledger and the resource state show it, and back.

Members and pending removals are maps (owner id -> member, server -> removal), so that a JSON merge patch of the
difference touches only what changed. Status holds live members, pending removals and at most MAX_JOBS jobs:
its size follows the workload's size now, never its history (PRODUCT.md 3.9).
"""

from __future__ import annotations

import json
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.ledger import GroupLedger, OwnerKey, Removal, now
from alb_membership.state import ResourceState, stamp, unstamp

# Beyond this many bytes of members, status records only part of them (etcd refuses objects over 1.5 MiB;
# pending removals and jobs come first). The rest are protected while this operator runs, not across restarts.
MEMBERS_BUDGET_BYTES = 900 * 1024


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
        out[owner_id] = member
    return out


def pending_status(ledger: GroupLedger, uid: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for owner_id in ledger.owner_ids(uid):
        owner = ledger.owner((uid, owner_id))
        server = ledger.server_of((uid, owner_id))
        if owner is None or server is None or not owner.leaving:
            continue
        removal = ledger.entries[server].removal
        if removal is None:
            continue
        item = out.get(server.compact)
        if item is None:
            item = out[server.compact] = _removal_status(removal)
            item["owners"] = []
        item["owners"].append({"id": owner_id, "source": owner.source, **({"pod": owner.name} if owner.name else {})})
    return out


def _removal_status(removal: Removal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "trigger": removal.trigger,
        "decidedAt": stamp(removal.decided_at),
        "attempt": removal.attempt,
    }
    if removal.client_token:
        out["clientToken"] = removal.client_token
    if removal.job_id:
        out["jobId"] = removal.job_id
    if removal.deletion_started:
        out["deletionStartedAt"] = stamp(removal.deletion_started)
    return out


def fit(members: dict[str, dict[str, Any]], budget: int) -> dict[str, dict[str, Any]]:
    """The members that fit in ``budget`` bytes of JSON, in owner-id order."""
    if len(json.dumps(members)) <= budget:
        return members
    out: dict[str, dict[str, Any]] = {}
    used = 2
    for owner_id, member in sorted(members.items()):
        used += len(json.dumps({owner_id: member}))
        if used > budget:
            break
        out[owner_id] = member
    return out


def to_status(state: ResourceState, ledger: GroupLedger, budget: int = MEMBERS_BUDGET_BYTES) -> dict[str, Any]:
    members = members_status(ledger, state.ref.uid)
    recorded = fit(members, budget)
    if len(recorded) < len(members):
        state.set_condition(
            "MembersRecorded",
            "False",
            "StatusBudgetExceeded",
            f"{len(recorded)} of {len(members)} live members fit in status; the rest are protected while this "
            "operator runs but not across a restart: split the resource (e.g. by label) into smaller ones",
        )
    else:
        state.conditions.pop("MembersRecorded", None)
    pending = pending_status(ledger, state.ref.uid)
    return {
        "observedGeneration": state.generation,
        "memberCount": len(members),
        "pendingCount": len(pending),
        "removedCount": state.removed_count,
        "lastJob": f"{state.jobs[0].job_id or '-'} {state.jobs[0].status}" if state.jobs else "",
        "members": recorded,
        "pending": pending,
        "jobs": [j.to_status() for j in state.jobs],
        "conditions": state.conditions_status(),
    }


def restore(ledger: GroupLedger, uid: str, status: dict[str, Any]) -> list[Server]:
    """Puts what an earlier operator recorded into the ledger; returns the servers with removals to send again.
    Reads the list form of operator 0.1 too (members with a phase, pending with an id), so an upgrade keeps
    its pending removals."""
    members = status.get("members") or {}
    if isinstance(members, list):
        members = {
            m["id"]: {**m, "server": Server.from_status(m["server"]).compact}
            for m in members
            if m.get("phase", "Active") == "Active"
        }
    for owner_id, raw in members.items():
        ledger.hold((uid, owner_id), Server.parse(raw["server"]), raw.get("source", "pod"), raw.get("pod"))
    pending = status.get("pending") or {}
    if isinstance(pending, list):
        pending = {Server.from_status(p["server"]).compact: {**p, "owners": [{"id": p["id"]}]} for p in pending}
    servers = []
    for compact, raw in pending.items():
        server = Server.parse(compact)
        removal = Removal(
            trigger=raw.get("trigger", "unknown"),
            decided_at=unstamp(raw.get("decidedAt")) or now(),
            deletion_started=unstamp(raw.get("deletionStartedAt")),
            attempt=int(raw.get("attempt", 0)),
            client_token=raw.get("clientToken"),
            job_id=raw.get("jobId"),
        )
        for owner in raw.get("owners") or []:
            key: OwnerKey = (uid, owner["id"])
            ledger.restore(key, server, owner.get("source", "pod"), owner.get("pod"), removal)
        servers.append(server)
    return servers
