"""What the operator holds, counted when Prometheus asks (never on an event's path): resources Degraded, and the age
of each group's oldest pending removal, for the alerts a person acts on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from alb_membership.model.ledger import GroupKey, GroupLedger, now
from alb_membership.model.state import ResourceState


def degraded(resources: Iterable[ResourceState]) -> int:
    return sum(1 for s in resources if (c := s.conditions.get("Degraded")) is not None and c.status == "True")


def oldest_pending(ledgers: Mapping[GroupKey, GroupLedger]) -> dict[str, float]:
    """Server group -> seconds since its oldest pending removal was decided; groups with none are left out."""
    clock = now()
    out: dict[str, float] = {}
    for ledger in ledgers.values():
        decided = [e.removal.decided_at for e in ledger.pending() if e.removal is not None]
        if decided:
            age = max(0.0, (clock - min(decided)).total_seconds())
            out[ledger.group_id] = max(age, out.get(ledger.group_id, 0.0))
    return out
