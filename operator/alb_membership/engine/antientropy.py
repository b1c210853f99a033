"""Anti-entropy: after start and then periodically, compare what the operator owns with the cluster and with the
groups, read fresh from both (never from the watches, which it exists to distrust: a relist after 410 Gone drops
the deletions in its gap).

- Cluster: the pods of every namespace with a resource are listed from the API server; a pod the operator had
  recorded and the list no longer has was deleted unseen (in a watch gap): it leaves, and that is a leak repaired
  (metric and Event). Only absence counts, never presence: the list may be older than the latest watch event.
- Groups: removals pending and not in flight whose servers are no longer in the group are forgotten (already
  out). In a group with registration on, what the group shows of every member's server is recorded, and a live
  member whose server is missing is added. Servers the operator never recorded are never looked at: they are
  someone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.cluster.kube import Kube
from alb_membership.engine import outcomes
from alb_membership.engine.reconciler import Reconciler
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import GroupKey, GroupLedger

log = logging.getLogger(__name__)

GROUP_SECONDS = 60.0  # one group's listings, retries included


class AntiEntropy:
    def __init__(
        self,
        reconciler: Reconciler,
        kube: Kube,
        client_for: Callable[[str], AlbClient],
        metrics: Metrics,
        interval: float,
    ) -> None:
        self._reconciler = reconciler
        self._kube = kube
        self._client_for = client_for
        self._metrics = metrics
        self.interval = interval
        self._wakeup = asyncio.Event()

    def soon(self) -> None:
        """A watch had to list again (410 Gone): deletions in its gap may be missing, so a round now."""
        self._wakeup.set()

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        while True:
            self._wakeup.clear()  # a relist signalled during the round below starts another one
            try:
                await self.check()
            except Exception as exc:  # the next round may do better; the operator goes on meanwhile
                log.warning("anti-entropy round failed (%s: %s)", type(exc).__name__, exc)
                self._metrics.internal_errors.labels("anti-entropy").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.interval)

    async def check(self) -> None:
        await self.check_cluster()
        await self.check_groups()

    async def check_cluster(self) -> None:
        """One namespace at a time: a fresh list of its pods is held only while its resources are checked. A
        namespace that cannot be listed is told and counted; the others are checked all the same."""
        namespaces = sorted({s.ref.namespace for s in self._reconciler.resources.values() if not s.deleting})
        for namespace in namespaces:
            try:
                await self._check_namespace(namespace)
            except Exception as exc:
                self._failed(f"namespace {namespace}", exc)

    async def _check_namespace(self, namespace: str) -> None:
        states = [s for s in self._reconciler.resources.values() if s.ref.namespace == namespace and not s.deleting]
        # Owners recorded before the list begins: one recorded later may be a pod newer than the list.
        before = {s.ref.uid: set(self._reconciler.ledger(s.group).owner_ids(s.ref.uid)) for s in states}
        listed = await self._kube.list_pods(namespace, self._reconciler.settings.eni_annotation)
        for state in states:
            if self._reconciler.resources.get(state.ref.uid) is state:
                self._reconciler.repair(state, listed, before[state.ref.uid])

    async def check_groups(self) -> None:
        """Each group on its own, within GROUP_SECONDS: one that cannot be listed (throttled, changing faster than
        it can be paged) is told and counted, and the groups after it are checked all the same."""
        for key, ledger in list(self._reconciler.ledgers.items()):
            try:
                await self._check_group(key, ledger)
            except Exception as exc:
                self._failed(f"server group {ledger.group_id}", exc)

    async def _check_group(self, key: GroupKey, ledger: GroupLedger) -> None:
        if any(s.group == key and s.spec.register_weight is not None for s in self._reconciler.resources.values()):
            await self._read_members(key, ledger)
        idle = [e for e in ledger.pending() if e.server not in self._in_flight(key)]
        if not idle:
            return
        deadline = asyncio.get_running_loop().time() + GROUP_SECONDS
        out = await self._client_for(key[0]).out_of_rotation(
            ledger.group_id, [e.server for e in idle], deadline=deadline
        )
        # In flight may have changed during the listing: a batch taken up meanwhile is the pipeline's.
        gone = [e for e in idle if e.server in out and e.server not in self._in_flight(key)]
        if not gone:
            return
        states = self._reconciler.directory.states_of(gone)
        # A removal whose token was written ahead with some of these: sent with fewer servers, the cloud would
        # refuse the token (IdempotenceSignatureMismatch); the rest go as a new attempt.
        tokens = {e.removal.client_token for e in gone if e.removal is not None and e.removal.client_token}
        for entry in ledger.pending():
            if entry not in gone and entry.removal is not None and entry.removal.client_token in tokens:
                ledger.new_attempt(entry.server)
        overtaken = outcomes.finish_removals(gone, ledger, states, removed_here=False)
        self._metrics.forgotten.inc(len(gone))
        if overtaken:
            self._reconciler.notices.post(
                states,
                "Warning",
                "ServerHeldAfterRemoval",
                "servers out of the group although a live pod or endpoint holds them now; they go back in: "
                + ", ".join(str(e.server) for e in overtaken[:10]),
            )
            self._reconciler.in_group_changed(ledger, [e.server for e in overtaken])
        self._reconciler.directory.changed(states)
        log.info("%d pending removal(s) from %s were out of the group already", len(gone), ledger.group_id)

    async def _read_members(self, key: GroupKey, ledger: GroupLedger) -> None:
        """The whole group's listing, for its members without a change under way: a hint (pages of a changing
        group can miss a server), and a wrong hint costs one call (an addition the cloud answers as done)."""
        deadline = asyncio.get_running_loop().time() + GROUP_SECONDS
        listed = await self._client_for(key[0]).listed_servers(ledger.group_id, deadline=deadline)
        busy = self._in_flight(key)
        ours = {
            e.server: (listed[e.server].status, listed[e.server].weight) if e.server in listed else ("Absent", None)
            for e in list(ledger.entries.values())
            if e.change is None and e.server not in busy
        }
        self._reconciler.group_read(key, ours, every=False)

    def _failed(self, what: str, exc: Exception) -> None:
        log.warning(
            "anti-entropy could not check %s (%s: %s); the next round tries again", what, type(exc).__name__, exc
        )
        self._metrics.internal_errors.labels("anti-entropy").inc()

    def _in_flight(self, key: GroupKey) -> set[Server]:
        pipeline = self._reconciler.pipelines.get(key)
        return pipeline.in_flight if pipeline is not None else set()
