"""Acts on what a round decided (engine/round.py), once, at its end: removals and additions go to the group's
pipeline, people hear of leaks repaired, removals undone, members released and pods that cannot be mapped (Events),
Prometheus counts them, the status is written soon, and a resource whose endpoints must be judged again is looked
at again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from alb_membership.alb.models import Server
from alb_membership.cluster.notices import Notices
from alb_membership.cluster.status_writer import StatusWriter
from alb_membership.engine.round import Round
from alb_membership.metrics import Metrics
from alb_membership.model.health import mapping_changed
from alb_membership.model.ledger import GroupKey, GroupLedger
from alb_membership.model.state import ResourceState

log = logging.getLogger(__name__)

MAX_WARNED = 10_000
MAX_UNMAPPABLE_KEPT = 1_000  # a group holds at most 1,000 servers
LEAK_TRIGGERS = frozenset({"pod-gone", "endpoint-gone", "spec-change"})


class Enqueue(Protocol):
    """What effects need of a group's pipeline."""

    def enqueue(self, servers: list[Server]) -> None: ...


class Effects:
    def __init__(
        self,
        pipeline_for: Callable[[GroupKey], Enqueue],
        writer: StatusWriter,
        notices: Notices,
        metrics: Metrics,
        identities: Callable[[], int],
        recheck: Callable[[ResourceState], None],
    ) -> None:
        self._pipeline_for = pipeline_for
        self._writer = writer
        self._notices = notices
        self._metrics = metrics
        self._identities = identities
        self._recheck = recheck
        self._warned: set[tuple[str, str]] = set()  # (resource UID, pod) told once that it cannot be mapped
        self._rechecks: dict[str, asyncio.TimerHandle] = {}  # resource UID -> its endpoints' next look

    def finish(self, state: ResourceState, ledger: GroupLedger, round_: Round, repair: bool) -> None:
        """``repair``: whatever the round removes for owners that went away unseen is a leak repaired."""
        if round_.removals:
            self._removals(state, ledger, round_.removals, repair)
        if round_.additions:
            for server in round_.additions:
                log.info("%s: %s joins %s", state.ref, server, ledger.group_id)
            self._pipeline_for(state.group).enqueue(round_.additions)
        if round_.undone:
            for _, reason in round_.undone:
                self._metrics.undone.labels(reason).inc()
            self._notices.post(
                [state],
                "Normal",
                "RemovalUndone",
                f"{len(round_.undone)} server(s) taken out of {ledger.group_id} for an owner that turned out live "
                "go back in: " + ", ".join(f"{s} ({why})" for s, why in round_.undone[:10]),
            )
        if round_.released:
            self._metrics.released.inc(len(round_.released))
            self._notices.post(
                [state],
                "Normal",
                "MemberReleased",
                f"{len(round_.released)} live member(s) no longer picked by the spec are released, not removed "
                f"(they stay in {ledger.group_id}): " + ", ".join(sorted(round_.released)[:10]),
            )
        for unmappable in round_.unmappable:
            self._warn_unmappable(state, unmappable.name, unmappable.reason)
        self._track_unmappable(state, round_)
        if round_.recheck_in is not None:
            self._recheck_later(state, round_.recheck_in)
        if round_.removals or round_.additions or round_.released or round_.changed:
            self._writer.soon(state)
        self._metrics.ledger_identities.set(self._identities())

    def forget(self, resource_uid: str) -> None:
        self._warned = {w for w in self._warned if w[0] != resource_uid}
        recheck = self._rechecks.pop(resource_uid, None)
        if recheck is not None:
            recheck.cancel()

    def _removals(self, state: ResourceState, ledger: GroupLedger, removals: list[Server], repair: bool) -> None:
        triggers = {s: e.removal.trigger for s in removals if (e := ledger.entries.get(s)) and e.removal}
        for server in removals:
            log.info("%s: %s leaves %s (%s)", state.ref, server, ledger.group_id, triggers.get(server, "?"))
        self._pipeline_for(state.group).enqueue(removals)
        leaks = [s for s in removals if triggers.get(s) in LEAK_TRIGGERS]
        if repair and leaks:
            self._metrics.leaks_repaired.inc(len(leaks))
            self._notices.post(
                [state],
                "Normal",
                "LeakRepaired",
                f"{len(leaks)} server(s) whose owners went away unseen leave {ledger.group_id}: "
                + ", ".join(str(s) for s in leaks[:10]),
            )

    @staticmethod
    def _track_unmappable(state: ResourceState, round_: Round) -> None:
        before = dict(state.unmappable)
        if round_.whole:
            state.unmappable.clear()
        for name in round_.mapped:
            state.unmappable.pop(name, None)
        for unmappable in round_.unmappable:
            if len(state.unmappable) < MAX_UNMAPPABLE_KEPT or unmappable.name in state.unmappable:
                state.unmappable[unmappable.name] = unmappable.reason
        if state.unmappable != before:
            mapping_changed(state)

    def _warn_unmappable(self, state: ResourceState, name: str, reason: str) -> None:
        if (state.ref.uid, name) in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned.add((state.ref.uid, name))
        self._notices.post(
            [state], "Warning", "UnmappablePod", f"pod {name} cannot be mapped to an ALB server: {reason}"
        )

    def _recheck_later(self, state: ResourceState, delay: float) -> None:
        """One look per resource, however many endpoints are missing."""
        if state.ref.uid in self._rechecks:
            return

        def recheck() -> None:
            self._rechecks.pop(state.ref.uid, None)
            self._recheck(state)

        self._rechecks[state.ref.uid] = asyncio.get_running_loop().call_later(delay + 0.05, recheck)
