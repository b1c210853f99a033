"""What a group's pipeline asks of the rest of the operator (engine/pipeline.py's Directory): which resources a
removal concerns, who holds the group's servers right now (the last check before a call), and their status."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from alb_membership.cluster.status_writer import StatusWriter
from alb_membership.engine.gated import GatedPods
from alb_membership.engine.pipeline import Holders
from alb_membership.model.ledger import Entry, GroupKey, GroupLedger
from alb_membership.model.owners import OwnerReader, pod_uid_of
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import ResourceState
from alb_membership.model.view import LiveView


class ResourceDirectory:
    def __init__(
        self,
        resources: Mapping[str, ResourceState],
        owners: OwnerReader,
        gated: GatedPods,
        writer: StatusWriter,
        group_key: Callable[[Spec], GroupKey],
        view: Callable[[], LiveView | None],
    ) -> None:
        self._resources = resources
        self._owners = owners
        self._gated = gated
        self._writer = writer
        self._group_key = group_key
        self._view = view

    def states_of(self, entries: Iterable[Entry]) -> list[ResourceState]:
        """The resources whose owners' leaving decided these removals."""
        uids = sorted({uid for e in entries for uid, _ in e.leaving_owners()})
        return [self._resources[uid] for uid in uids if uid in self._resources]

    def holders(self, ledger: GroupLedger) -> Holders:
        """Live owners of the group's servers in the cluster right now, across every resource on the group, read
        from the resources as the watches show them (not from what this operator recorded)."""
        out: Holders = {}
        view = self._view()
        if view is None:
            return out
        for body in view.memberships():
            meta = body["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            spec = Spec.parse(body["spec"])
            if self._group_key(spec) != ledger.key:
                continue
            ref = Ref(meta["namespace"], meta["name"], meta["uid"])
            scan = self._owners.current(spec, ref.namespace, view, list(view.pods(ref.namespace)))
            for owner in scan.owners.values():
                if not owner.leaving and pod_uid_of(owner.owner_id, owner.source) not in self._gated:
                    out.setdefault(owner.server, {})[(ref.uid, owner.owner_id)] = (owner.source, owner.name)
        return out

    def dry_run(self, entry: Entry) -> bool:
        states = self.states_of([entry])
        return bool(states) and all(s.spec.dry_run for s in states)

    async def flush(self, states: Iterable[ResourceState]) -> None:
        """Writes their status now (raises when it cannot: no call goes out unrecorded)."""
        for state in states:
            await self._writer.flush(state)

    def changed(self, states: Iterable[ResourceState]) -> None:
        """Their status should be written soon."""
        for state in states:
            self._writer.soon(state)
