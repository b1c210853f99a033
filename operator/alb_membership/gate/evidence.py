"""What the cloud shows that proves a server out of rotation (PRODUCT.md 3.10), read for the deletion gate.

Proof is one of: the removal's job Succeeded (the gate reads that from the resources' job records), the server
absent from a listing that is a snapshot, or the server shown ``Draining`` (where the cloud reports it: GWLB does,
the ALB SDK's enum is Adding | Available | Configuring | Removing). ``Removing`` alone is no proof: the server may
still receive new requests until the job ends. Anything else is "in" (seen in rotation) or "unknown":

- A failed listing is unknown for every server of the group: nothing is confirmed from it (before issue 17 a
  failure was cached as "the one server asked about is in rotation", so every other held server of the group read
  as out).
- A server whose ServerId the listing shows under another identity (another port, type or IP) is unknown, not
  absent: that entry may be the server itself, read differently.
- A paged listing is not a snapshot (issue 18): a change between pages shifts them, so a server can be skipped.
  The gate asks only about the servers it waits for (``ServerIds``), which fit one page; an answer that still came
  in pages proves presence and Draining, never absence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from alb_membership.alb.models import Server
from alb_membership.model.ledger import GroupKey

log = logging.getLogger(__name__)

OUT_OF_ROTATION = frozenset({"Draining"})
Verdict = Literal["out", "in", "unknown"]
# (group, ServerIds) -> (the servers of one page, True when that page is the whole answer)
PageReader = Callable[[GroupKey, list[str]], Awaitable[tuple[list[dict[str, Any]], bool]]]

MAX_AGE_SECONDS = 0.5  # a listing serves every hold of its group this long
READ_TIMEOUT_SECONDS = 3.0  # a listing that takes longer (the client's retries) failed, as far as holds go
IDS_PER_READ = 40  # ServerIds per ListServerGroupServers: their servers fit one page of 100 (up to 2 ports each)
FORGET_SECONDS = 30.0  # listings and locks of groups nobody asked about for this long are dropped


@dataclass(frozen=True)
class Listing:
    """One read of a group, for the servers asked about."""

    read_at: float  # when the read began: it shows the group as it was then, at the earliest
    asked: frozenset[Server]
    statuses: Mapping[Server, str] = field(default_factory=dict)  # as shown, for the servers the answer had
    snapshot_ids: frozenset[str] = frozenset()  # ServerIds whose read came in one page: absence is proof
    failed: bool = False

    def verdict(self, server: Server) -> Verdict:
        if self.failed or server not in self.asked:
            return "unknown"
        status = self.statuses.get(server)
        if status is None:
            if any(listed.server_id == server.server_id for listed in self.statuses):
                # Its ServerId is there under another identity (port, type, IP): as the cloud shows it or as we
                # read it, that may be this server. No proof of absence.
                return "unknown"
            return "out" if server.server_id in self.snapshot_ids else "unknown"
        return "out" if status in OUT_OF_ROTATION else "in"


class GroupListings:
    """One listing of a group at a time, shared by every hold waiting on its servers, reused for ``max_age``
    (a failed one too: every server unknown until then, so an outage costs one read per group per ``max_age``).
    Bounded by the groups being waited on, and pruned on its own clock (``prune``)."""

    def __init__(
        self,
        read: PageReader,
        max_age: float = MAX_AGE_SECONDS,
        timeout: float = READ_TIMEOUT_SECONDS,
        ids_per_read: int = IDS_PER_READ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_age = max_age
        self._timeout = timeout
        self._ids_per_read = ids_per_read
        self._clock = clock
        self._listed: dict[GroupKey, Listing] = {}
        self._locks: dict[GroupKey, asyncio.Lock] = {}
        self._asked_at: dict[GroupKey, float] = {}

    def __len__(self) -> int:
        return len(self._listed)

    async def verdict(self, key: GroupKey, server: Server, wanted: Iterable[Server], since: float) -> Verdict:
        """What the group shows of ``server``, from a read begun at ``since`` or later; a new read covers every
        server of ``wanted`` (all the holds of the group wait for) so that one read serves them all."""
        self._asked_at[key] = self._clock()
        async with self._locks.setdefault(key, asyncio.Lock()):
            listing = self._listed.get(key)
            stale = listing is None or listing.read_at < since or self._clock() - listing.read_at > self._max_age
            if stale or (listing is not None and not listing.failed and server not in listing.asked):
                listing = self._listed[key] = await self._list(key, {*wanted, server})
        assert listing is not None
        return listing.verdict(server)

    async def _list(self, key: GroupKey, servers: set[Server]) -> Listing:
        began = self._clock()
        ids = sorted({s.server_id for s in servers})
        statuses: dict[Server, str] = {}
        whole: set[str] = set()
        try:
            for start in range(0, len(ids), self._ids_per_read):
                chunk = ids[start : start + self._ids_per_read]
                items, one_page = await asyncio.wait_for(self._read(key, chunk), self._timeout)
                for raw in items:
                    statuses[Server.from_api(raw)] = str(raw.get("Status") or "")
                if one_page:
                    whole.update(chunk)
        except Exception as exc:  # nothing is out as far as anyone knows: the next look may do better
            log.warning("could not list %s (%s: %s); no server of it is confirmed out", key[1], type(exc).__name__, exc)
            return Listing(began, frozenset(servers), failed=True)
        return Listing(began, frozenset(servers), statuses, frozenset(whole))

    def prune(self) -> None:
        """Forgets the groups nobody asked about lately (their holds ended)."""
        cutoff = self._clock() - FORGET_SECONDS
        for key in [k for k, at in self._asked_at.items() if at < cutoff]:
            lock = self._locks.get(key)
            if lock is not None and lock.locked():
                continue
            self._asked_at.pop(key, None)
            self._listed.pop(key, None)
            self._locks.pop(key, None)
