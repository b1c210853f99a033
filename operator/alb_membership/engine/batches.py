"""Which pending removals of a group go out together, and under which ClientToken. Plain code."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from alb_membership.alb.batching import client_token
from alb_membership.alb.models import Server
from alb_membership.model.ledger import Entry, GroupLedger, Removal
from alb_membership.model.status import decided_stamp


def token_for(entries: list[Entry]) -> str:
    """From what status records: each leaving owner's resource UID and owner id (the pod UID for pods), with the
    removal's attempt and the time it was decided (to the millisecond, as status records it). A retry or a successor
    operator sends the same batch with the same token; a pod reusing an old pod's IP has another UID, and a second
    removal of one owner (a static server dropped, put back, dropped again) another decision time: another token."""
    seed = "/".join(sorted(_seed(uid, owner_id, e.removal) for e in entries for uid, owner_id in e.leaving_owners()))
    return client_token(seed, [e.server for e in entries])


def _seed(uid: str, owner_id: str, removal: Removal | None) -> str:
    if removal is None:
        return f"{uid}:{owner_id}#0"
    return f"{uid}:{owner_id}#{removal.attempt}@{decided_stamp(removal.decided_at)}"


def next_batch(
    queue: OrderedDict[Server, None], ledger: GroupLedger, size: int, dry_run: Callable[[Entry], bool]
) -> list[Entry]:
    """Takes the next call's removals off ``queue``: the exact batch the oldest queued removal was sent in before
    (same ClientToken), or up to ``size`` removals not sent yet that share its dry-run setting."""
    while queue:
        first = ledger.entries.get(next(iter(queue)))
        if first is None or first.removal is None:
            queue.popitem(last=False)  # finished or called off meanwhile
            continue
        token = first.removal.client_token
        if token is not None:
            chosen = [e for e in ledger.pending() if e.removal is not None and e.removal.client_token == token]
        else:
            mode = dry_run(first)
            chosen = [
                e
                for e in (ledger.entries.get(s) for s in queue)
                if e is not None and e.removal is not None and e.removal.client_token is None and dry_run(e) == mode
            ][:size]
        for entry in chosen:
            queue.pop(entry.server, None)
        return chosen
    return []
