"""What a group's pipeline asks of the rest of the operator (engine/pipeline.py's Directory): which resources a
change concerns, who holds the group's servers right now (the last check before a call), and their status."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.cluster.status_writer import StatusWriter
from alb_membership.engine.gated import GatedPods
from alb_membership.engine.pipeline import Holders
from alb_membership.model.ledger import Entry, GroupKey, GroupLedger, OwnerKey
from alb_membership.model.membership import Seen, static_owners
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
        in_group_changed: Callable[[GroupLedger, Iterable[Server]], None] = lambda _ledger, _servers: None,
    ) -> None:
        self._resources = resources
        self._owners = owners
        self._gated = gated
        self._writer = writer
        self._group_key = group_key
        self._view = view
        self.in_group_changed = in_group_changed
        self._specs: dict[str, tuple[Mapping[str, Any], Spec, dict[Server, list[Seen]]]] = {}  # parsed, by UID

    def states_of(self, entries: Iterable[Entry], members: bool = False) -> list[ResourceState]:
        """The resources whose owners' leaving decided these removals, or whose live owners want these additions;
        ``members``: the resources of the entries' live owners too (what status shows of members changed)."""
        uids = sorted({uid for e in entries for uid, _ in (e.owners if members else e.concerned())})
        return [self._resources[uid] for uid in uids if uid in self._resources]

    def holders(self, ledger: GroupLedger) -> Holders:
        """Live owners of the group's servers in the cluster right now, across every resource on the group, read
        from the resources as the watches show them (not from what this operator recorded).

        Each server's owners are read when asked for (the pipeline asks about one batch), through the store's
        indexes: the cost is that of the servers asked about, not of every member of every resource."""
        view = self._view()
        resources: list[tuple[Ref, Spec, dict[Server, list[Seen]]]] = []
        if view is not None:
            specs: dict[str, tuple[Mapping[str, Any], Spec, dict[Server, list[Seen]]]] = {}
            for body in view.memberships():
                meta = body["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                cached = self._specs.get(meta["uid"])
                if cached is None or cached[0] is not body:
                    spec = Spec.parse(body["spec"])
                    statics: dict[Server, list[Seen]] = {}
                    for seen in static_owners(spec).values():
                        statics.setdefault(seen.server, []).append(seen)
                    cached = (body, spec, statics)
                specs[meta["uid"]] = cached
                if self._group_key(cached[1]) == ledger.key:
                    resources.append((Ref(meta["namespace"], meta["name"], meta["uid"]), cached[1], cached[2]))
            self._specs = specs

        def of(server: Server) -> dict[OwnerKey, tuple[str, str | None]]:
            out: dict[OwnerKey, tuple[str, str | None]] = {}
            if view is None:
                return out
            for ref, spec, statics in resources:
                owners = statics.get(server, []) + self._owners.holding(spec, ref.namespace, view, server)
                for owner in owners:
                    if not owner.leaving and pod_uid_of(owner.owner_id, owner.source) not in self._gated:
                        out[(ref.uid, owner.owner_id)] = (owner.source, owner.name)
            return out

        def every() -> list[Server]:
            if view is None:
                return []
            found: set[Server] = set()
            for ref, spec, statics in resources:
                found.update(statics)
                found.update(o.server for o in self._owners.current(spec, ref.namespace, view).owners.values())
            return sorted(found)

        return LiveHolders(of, every)

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


HolderSet = dict[OwnerKey, tuple[str, str | None]]


class LiveHolders(Holders):
    """The pipeline's Holders (a dict: server -> its live owners, servers without any absent), filled in per server
    on first look-up (``get``, ``[]``, ``in``). Reading it whole (iteration, ``len``, ``values``...) first finds every
    server the resources pick, as a full scan would."""

    def __init__(self, of: Callable[[Server], HolderSet], every: Callable[[], list[Server]]) -> None:
        super().__init__()
        self._of = of
        self._every: Callable[[], list[Server]] | None = every
        self._looked: set[Server] = set()

    def _look(self, server: Server) -> HolderSet | None:
        if server not in self._looked and self._every is not None:
            self._looked.add(server)
            found = self._of(server)
            if found:
                dict.__setitem__(self, server, found)
        return dict.get(self, server)

    def _whole(self) -> None:
        if self._every is not None:
            for server in self._every():
                self._look(server)
            self._every = None

    def get(self, server: Server, default: Any = None) -> Any:
        found = self._look(server)
        return found if found else default

    def __getitem__(self, server: Server) -> HolderSet:
        found = self._look(server)
        if not found:
            raise KeyError(server)
        return found

    def __contains__(self, server: object) -> bool:
        return isinstance(server, Server) and bool(self._look(server))

    def __iter__(self) -> Iterator[Server]:
        self._whole()
        return super().__iter__()

    def __len__(self) -> int:
        self._whole()
        return super().__len__()

    def keys(self) -> Any:
        self._whole()
        return super().keys()

    def values(self) -> Any:
        self._whole()
        return super().values()

    def items(self) -> Any:
        self._whole()
        return super().items()

    def __repr__(self) -> str:
        self._whole()
        return super().__repr__()
