"""Which pending removals of a group go out together, and under which ClientToken. Plain code."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from alb_membership.alb.batching import client_token
from alb_membership.alb.models import Server
from alb_membership.model.ledger import Entry, GroupLedger


def token_for(entries: list[Entry]) -> str:
    """From UIDs only: each leaving owner's resource UID and owner id (the pod UID for pods), with the removal's
    attempt. A retry or a successor operator sends the same batch with the same token; a pod reusing an old pod's
    IP has another UID, so another token."""
    seed = "/".join(
        sorted(
            f"{uid}:{owner_id}#{e.removal.attempt if e.removal else 0}"
            for e in entries
            for uid, owner_id in e.leaving_owners()
        )
    )
    return client_token(seed, [e.server for e in entries])


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
