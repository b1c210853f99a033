"""Anti-entropy: after start and then periodically, compare what the operator owns with the cluster and with the
groups, read fresh from both (never from the watches, which it exists to distrust: a relist after 410 Gone drops
the deletions in its gap).

- Cluster: every resource is synced against pods and EndpointSlices listed from the API server; an owner that
  went away unseen (a pod deleted in a watch gap, a static server dropped while no operator ran) leaves, and
  that is a leak repaired (metric and Event).
- Groups: removals pending and not in flight whose servers are no longer in the group are forgotten (already
  out). Servers the operator never recorded are never looked at: they are someone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from alb_membership import outcomes
from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.kube import Kube
from alb_membership.ledger import GroupKey
from alb_membership.metrics import Metrics
from alb_membership.reconciler import Reconciler
from alb_membership.view import ListedView

log = logging.getLogger(__name__)


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
            try:
                await self.check()
            except Exception as exc:  # the next round may do better; the operator goes on meanwhile
                log.warning("anti-entropy round failed (%s: %s)", type(exc).__name__, exc)
                self._metrics.internal_errors.labels("anti-entropy").inc()
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.interval)

    async def check(self) -> None:
        await self.check_cluster()
        await self.check_groups()

    async def check_cluster(self) -> None:
        states = [s for s in self._reconciler.resources.values() if not s.deleting]
        view = ListedView()
        for namespace in sorted({s.ref.namespace for s in states}):
            view.pods_by_namespace[namespace] = await self._kube.list_pods(
                namespace, self._reconciler.settings.eni_annotation
            )
        for service in sorted({(s.ref.namespace, s.spec.service_name) for s in states if s.spec.service_name}):
            view.endpoints_by_service[service] = await self._kube.list_endpoints(*service)
        for state in states:
            if self._reconciler.resources.get(state.ref.uid) is state:
                self._reconciler.sync(state, view, repair=True)

    async def check_groups(self) -> None:
        for key, ledger in list(self._reconciler.ledgers.items()):
            idle = [e for e in ledger.pending() if e.server not in self._in_flight(key)]
            if not idle:
                continue
            listed = await self._client_for(key[0]).list_server_group_servers(ledger.group_id)
            present = {Server.from_api(x) for x in listed}
            # In flight may have changed during the listing: a batch taken up meanwhile is the pipeline's.
            gone = [e for e in idle if e.server not in present and e.server not in self._in_flight(key)]
            if not gone:
                continue
            states = self._reconciler.states_of(gone)
            outcomes.record_removed(gone, ledger, states)
            self._metrics.forgotten.inc(len(gone))
            self._reconciler.changed(states)
            log.info("%d pending removal(s) from %s were out of the group already", len(gone), ledger.group_id)

    def _in_flight(self, key: GroupKey) -> set[Server]:
        pipeline = self._reconciler.pipelines.get(key)
        return pipeline.in_flight if pipeline is not None else set()
