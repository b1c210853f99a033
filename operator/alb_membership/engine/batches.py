"""Which pending changes of a group go out together, and under which ClientToken. Plain code."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection

from alb_membership.alb.batching import client_token
from alb_membership.alb.models import Server
from alb_membership.model.ledger import Change, Entry, GroupLedger
from alb_membership.model.status import decided_stamp


def token_for(entries: list[Entry]) -> str:
    """From what status records: each concerned owner's resource UID and owner id (the pod UID for pods), with the
    change's attempt and the time it was decided (to the millisecond, as status records it). A retry or a successor
    operator sends the same batch with the same token; a pod reusing an old pod's IP has another UID, and a second
    removal of one owner (a static server dropped, put back, dropped again) another decision time: another token.
    An addition's seed is marked apart: adding and removing one owner's server are never one token."""
    seed = "/".join(sorted(_seed(uid, owner_id, e) for e in entries for uid, owner_id in e.concerned()))
    return client_token(seed, [e.server for e in entries])


def _seed(uid: str, owner_id: str, entry: Entry) -> str:
    change: Change | None = entry.change
    mark = "+" if entry.adding else ""
    if change is None:
        return f"{mark}{uid}:{owner_id}#0"
    return f"{mark}{uid}:{owner_id}#{change.attempt}@{decided_stamp(change.decided_at)}"


def next_batch(
    queue: OrderedDict[Server, None],
    ledger: GroupLedger,
    size: int,
    dry_run: Callable[[Entry], bool],
    busy: Collection[Server] = (),
    additions_first: bool = False,
) -> list[Entry]:
    """Takes the next call's changes off ``queue``: the exact batch the oldest queued change was sent in before
    (same ClientToken), or up to ``size`` changes not sent yet, of one kind and one dry-run setting. Removals go
    before additions (a server leaving must not wait for servers joining), unless ``additions_first``: additions
    that waited through a removal call go next, so they are never starved. ``busy``: servers whose call or job
    is under way; their next change is queued again when it ends."""
    while queue:
        head = next(iter(queue))
        first = ledger.entries.get(head)
        if first is None or first.change is None or head in busy:
            queue.popitem(last=False)  # finished or called off meanwhile, or under way
            continue
        token = first.change.client_token
        if token is not None:
            chosen = [e for e in ledger.changing() if e.change is not None and e.change.client_token == token]
        else:
            waiting = [
                e
                for s in queue
                if s not in busy
                and (e := ledger.entries.get(s)) is not None
                and e.change is not None
                and e.change.client_token is None
            ]
            removals = [e for e in waiting if not e.adding]
            additions = [e for e in waiting if e.adding]
            kind = additions if additions and (additions_first or not removals) else removals
            mode = dry_run(kind[0])
            chosen = [e for e in kind if dry_run(e) == mode][:size]
        for entry in chosen:
            queue.pop(entry.server, None)
        return chosen
    return []
