"""What one pass over a resource decided, as values: the decisions (engine/decisions.py) fill it, and the effects
(engine/effects.py) act on it once, at its end."""

from __future__ import annotations

from dataclasses import dataclass, field

from alb_membership.alb.models import Server
from alb_membership.model.owners import Unmappable


@dataclass
class Round:
    removals: list[Server] = field(default_factory=list)  # servers whose last live owner left: they go
    additions: list[Server] = field(default_factory=list)  # servers a live, ready owner wants in: they join
    undone: list[tuple[Server, str]] = field(default_factory=list)  # of those, put back after a wrong removal: why
    released: list[str] = field(default_factory=list)  # live members the spec no longer picks: they stay, untracked
    unmappable: list[Unmappable] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)  # pods seen mappable (or gone) now, by name
    whole: bool = False  # every member was looked at: ``unmappable`` is all there is
    changed: bool = False  # the ledger changed in a way status shows
    recheck_in: float | None = None  # seconds until the resource's endpoints must be looked at again

    def recheck(self, seconds: float) -> None:
        self.recheck_in = seconds if self.recheck_in is None else min(self.recheck_in, seconds)
