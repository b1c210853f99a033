"""The engine's entry points: the resource's lifecycle (loaded from status, started, deleted, forgotten) and what
happened in the cluster (a pod, a Service's endpoints, a deletion the gate holds). Each passes the stages once:
the cluster's view -> owners (model/owners.py, pure) -> the ledger's decisions (engine/decisions.py, into a Round)
-> effects (engine/effects.py: pipeline, Events, metrics, status)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.cluster.notices import Notices
from alb_membership.cluster.status_writer import StatusWriter
from alb_membership.engine.decisions import Decider, leave, release
from alb_membership.engine.directory import ResourceDirectory
from alb_membership.engine.effects import Effects
from alb_membership.engine.gated import GatedPods
from alb_membership.engine.pipeline import GroupPipeline, Services
from alb_membership.engine.readiness import ReadinessGates
from alb_membership.engine.round import Round
from alb_membership.metrics import Metrics
from alb_membership.model import status
from alb_membership.model.health import group_missing, set_health
from alb_membership.model.ledger import ABSENT, IN_GROUP, Entry, GroupKey, GroupLedger, now
from alb_membership.model.membership import PodView, Seen, endpoint_owner_id, endpoint_parts
from alb_membership.model.owners import OwnerReader, pod_owner_ids, pod_uid_of
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import ResourceState
from alb_membership.model.view import ClusterView, LiveView

log = logging.getLogger(__name__)

ALL_SOURCES = frozenset({"pod", "endpoint", "static"})


@dataclass(frozen=True)
class ReconcilerSettings:
    default_region: str | None = None
    eni_annotation: str = "k8s.aliyun.com/eni-id"
    endpoint_grace_seconds: float = 2.0
    # After the gate let a pod's deletion go ahead: a pod still live without a deletion this much later was not
    # deleted after all (refused by another webhook, a PodDisruptionBudget, a precondition): its removal is undone.
    undo_after_seconds: float = 5.0


class Reconciler:
    def __init__(
        self,
        settings: ReconcilerSettings,
        services_for: Callable[[str], Services],
        writer_kube: Any,
        notices: Notices,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.resources: dict[str, ResourceState] = {}
        self.ledgers: dict[GroupKey, GroupLedger] = {}
        self.pipelines: dict[GroupKey, GroupPipeline] = {}
        self.view: LiveView | None = None
        self.writer = StatusWriter(writer_kube, self._project)
        self.notices = notices
        self._services_for = services_for
        self._owners = OwnerReader(settings.eni_annotation)
        self.gated = GatedPods()
        self._decider = Decider(settings.endpoint_grace_seconds, self.gated)
        self.readiness: ReadinessGates | None = None  # set by the runtime: pods' readiness gates
        self._effects = Effects(
            self.pipeline,
            self.writer,
            notices,
            metrics,
            lambda: sum(len(g.entries) for g in self.ledgers.values()),
            self._recheck_endpoints,
        )
        self.directory = ResourceDirectory(
            self.resources, self._owners, self.gated, self.writer, self.group_key, self._view, self.in_group_changed
        )
        self._expected: dict[str, asyncio.TimerHandle] = {}  # pod UID -> the look for its deletion
        self._looking: dict[str, asyncio.Task[None]] = {}  # pod UID -> its look under way (a reference kept)
        # Whether a pod is live as the API server (not a watch) shows it: set by the runtime.
        self.confirm_live: Callable[[str, str, str], Awaitable[bool]] | None = None
        # Set once this replica stops acting (shutdown, Lease given up): events still arriving change nothing.
        self.stopped = False

    # -- groups -----------------------------------------------------------------------------------------------

    def group_key(self, spec: Spec) -> GroupKey:
        return (spec.region or self.settings.default_region or "", spec.server_group_id)

    def ledger(self, key: GroupKey) -> GroupLedger:
        ledger = self.ledgers.get(key)
        if ledger is None:
            ledger = self.ledgers[key] = GroupLedger(key, self._touched)
        return ledger

    def _touched(self, uid: str) -> None:
        state = self.resources.get(uid)
        if state is not None:
            self.writer.soon(state)

    def pipeline(self, key: GroupKey) -> GroupPipeline:
        pipeline = self.pipelines.get(key)
        if pipeline is None:
            pipeline = self.pipelines[key] = GroupPipeline(self.ledger(key), self.directory, self._services_for(key[0]))
        return pipeline

    # -- resources --------------------------------------------------------------------------------------------

    def load(self, body: Mapping[str, Any]) -> ResourceState:
        """The resource as this operator knows it; the first time, from its status: members, and removals an
        earlier operator decided, which go out again with the ClientTokens they had."""
        meta = body["metadata"]
        state = self.resources.get(meta["uid"])
        if state is not None:
            return state
        spec = Spec.parse(body["spec"])
        state = ResourceState(
            Ref(meta["namespace"], meta["name"], meta["uid"]),
            spec,
            self.group_key(spec),
            int(meta.get("generation", 0)),
        )
        recorded = dict(body.get("status") or {})
        state.restore(recorded)
        ledger = self.ledger(state.group)
        pending = status.restore(ledger, state.ref.uid, recorded)
        for entry in _pending((ledger, server) for server in pending):
            assert entry.removal is not None
            if spec.gate_seconds is not None:
                entry.removal.gated = True  # for albm_exposure_seconds{gate="true"}
            if entry.removal.trigger == "deletion-gate":
                # Decided by an earlier leader's gate for a pod whose deletion may still wait on it: that pod, live
                # as it looks, holds nothing (the last check before the call must not call the removal off).
                for key in entry.leaving_owners():
                    pod_uid = pod_uid_of(key[1], entry.owners[key].source)
                    if pod_uid is not None:
                        self.gated.add(pod_uid)
                        self.expect_deletion(state.ref.namespace, pod_uid)  # the earlier leader's look is gone
        self.writer.known(state, recorded)
        self.resources[state.ref.uid] = state
        if pending:
            self.pipeline(state.group).enqueue(pending)
        return state

    def start(self, body: Mapping[str, Any], repair: bool) -> ResourceState:
        """On create, on a spec change, and on operator start (``repair``: whatever was missed while no operator
        ran is a leak to repair): catch up with the cluster as it is now."""
        state = self.load(body)
        was_dry_run = state.spec.dry_run
        state.spec = Spec.parse(body["spec"])
        state.generation = int(body["metadata"].get("generation", 0))
        if was_dry_run and not state.spec.dry_run:
            self.ledger(state.group).forget_dry_runs(state.ref.uid)
        assert self.view is not None, "the view is set at startup"
        if self.stopped:
            return state
        self.sync(state, self.view, repair)
        if state.spec.register_weight is not None:
            ledger = self.ledger(state.group)
            for owner_id in ledger.owner_ids(state.ref.uid):
                server = ledger.server_of((state.ref.uid, owner_id))
                if server is not None and ledger.entries[server].in_group is None:
                    ledger.entries[server].read_first = True
        if "Ready" not in state.conditions:
            set_health(state, None)
        self.writer.soon(state)
        return state

    def sync(self, state: ResourceState, view: ClusterView, repair: bool) -> None:
        """Compares everything the resource owns with the cluster: every source, every recorded owner."""
        if state.deleting or self.stopped:
            return
        namespace = state.ref.namespace
        scan = self._owners.current(state.spec, namespace, view)
        round_ = Round(unmappable=scan.unmappable, whole=True)
        pod_of = functools.partial(view.pod, namespace)
        self._decider.reconcile(state, self.ledger(state.group), scan.owners, set(ALL_SOURCES), pod_of, round_)
        self._finish(state, round_, repair)
        for pod_uid in {seen.pod_uid for seen in scan.owners.values() if seen.pod_uid}:
            pod = pod_of(pod_uid)
            if pod is not None:
                self._consider_gate(state, pod)

    def repair(self, state: ResourceState, listed: Iterable[PodView], recorded_before: set[str]) -> None:
        """Anti-entropy, from pods listed afresh: a pod recorded before the list began and absent from it was
        deleted unseen, and leaves. Only absence counts: a list is older than the watches' latest events, so
        nothing it shows as present is recorded from it."""
        if state.deleting or self.stopped:
            return
        present = {p.uid for p in listed}
        ledger = self.ledger(state.group)
        round_ = Round()
        for owner_id in ledger.owner_ids(state.ref.uid):
            owner = ledger.owner((state.ref.uid, owner_id))
            if owner is None or owner.leaving or owner_id not in recorded_before:
                continue
            # An endpoint without a pod name has no pod to be absent.
            pod_uid = pod_uid_of(owner_id, owner.source) if owner.source == "pod" or owner.name else None
            if pod_uid is not None and pod_uid not in present:
                leave(ledger, (state.ref.uid, owner_id), "pod-gone", None, round_)
        self._finish(state, round_, repair=True)

    def deleting(self, body: Mapping[str, Any]) -> bool:
        """The resource is being deleted: with Remove every member leaves, with Retain every live member is
        released; removals already decided go on either way (a terminating pod still leaves). True once nothing
        is left to do. Reads the spec of the delete itself (a policy change may come with it)."""
        if self.stopped:
            return False  # this replica no longer acts: the finalizer stays for the next one
        state = self.load(body)
        state.spec = Spec.parse(body["spec"])
        state.deleting = True
        ledger = self.ledger(state.group)
        uid = state.ref.uid
        round_ = Round()
        for owner_id in ledger.owner_ids(uid):
            owner = ledger.owner((uid, owner_id))
            if owner is None or owner.leaving:
                continue
            if state.spec.deletion_policy == "Remove":
                leave(ledger, (uid, owner_id), "resource-deleted", None, round_)
            else:
                release(ledger, (uid, owner_id), owner.name, round_)
        self._finish(state, round_, repair=False)
        self.writer.soon(state)
        if group_missing(state):
            return True  # nothing can be removed from a group that does not exist
        return not status.pending_status(ledger, uid)

    def forget(self, uid: str) -> None:
        state = self.resources.pop(uid, None)
        if state is None:
            return
        self.ledger(state.group).forget_resource(uid)
        self.writer.forget(state)
        self._decider.forget(uid)
        self._effects.forget(uid)

    # -- events -----------------------------------------------------------------------------------------------

    def pod_changed(self, pod: PodView, deleted: bool) -> None:
        if self.stopped:
            return
        for state in self._in_namespace(pod.namespace):
            round_ = Round()
            seen = self._owners.pod(state.spec, pod, round_.unmappable)
            if deleted or not round_.unmappable:
                round_.mapped.append(pod.name)
            key = (state.ref.uid, pod.uid)
            ledger = self.ledger(state.group)
            if deleted:
                leave(ledger, key, "pod-deleted", pod.deletion_started or now(), round_)
                ledger.settle(key)
            elif seen is not None:
                self._decider.apply(state, ledger, seen, round_, pod)
            elif ledger.server_of(key) is not None:
                self._decider.unseen_pod(ledger, key, pod, round_)
            backend = state.spec.backend
            if state.spec.service_name and (
                deleted or pod.going_away or (backend and backend.server_type != "Ip") or pod.declares(state.ref.name)
            ):
                # Its endpoints leave with it, whatever the slices say yet; an Eci or Eni endpoint's server is its
                # pod's instance or ENI, which the pod's change may have just told; and an endpoint whose pod waits
                # on this resource's readiness gate is added once its containers are ready (the slices cannot say).
                self._endpoints(state, round_, self._endpoint_keys_of(state.spec.service_name, pod))
            self._finish(state, round_, repair=False)
            if not deleted:
                self._consider_gate(state, pod)

    def endpoints_changed(self, namespace: str, service: str, keys: Iterable[str] | None = None) -> None:
        """The Service's endpoints changed: those of the owner ``keys`` (pod UIDs, or addresses of endpoints without
        a pod), or any of them when None."""
        if self.stopped:
            return
        for state in self._in_namespace(namespace):
            if state.spec.service_name == service:
                round_ = Round()
                self._endpoints(state, round_, keys)
                self._finish(state, round_, repair=False)

    def let_through(self, servers: Iterable[tuple[GroupLedger, Server]]) -> None:
        """The gate let a pod's deletion go ahead while these servers were still in rotation: they are exposed
        from now until their removal ends (albm_exposure_seconds), also after a takeover (status keeps it)."""
        when = now()
        changed = []
        for entry in _pending(servers):
            if entry.removal is not None and entry.removal.exposed_since is None and not entry.removal.held_out:
                entry.removal.exposed_since = when
                changed.append(entry)
        self._status_soon(changed)

    def held_out(self, servers: Iterable[tuple[GroupLedger, Server]]) -> None:
        """The gate held a pod's deletion until these servers were out of rotation: not exposed, whenever their
        removal ends and whoever leads then (status keeps it)."""
        changed = []
        for entry in _pending(servers):
            if entry.removal is not None and not entry.removal.held_out and entry.removal.exposed_since is None:
                entry.removal.held_out = True
                changed.append(entry)
        self._status_soon(changed)

    def _status_soon(self, entries: list[Entry], members: bool = False) -> None:
        """``members``: the entries' live owners' resources too (what status shows of members changed)."""
        for state in self.directory.states_of(entries, members):
            self.writer.soon(state)

    def gate(self, pod: PodView) -> list[tuple[GroupLedger, Server]]:
        """A gated resource's member pod is about to be deleted: it leaves now, before the deletion exists (trigger
        deletion-gate), as an owner of every resource that picks it, gated or not (another resource's owner of
        the same pod must not hold its server). Returns the servers to wait for."""
        out: list[tuple[GroupLedger, Server]] = []
        if self.stopped:
            return out
        self._call_off_looks(pod.uid)  # this hold's answer expects the deletion anew
        self.gated.add(pod.uid)
        for state in self._in_namespace(pod.namespace):
            ledger, uid, round_ = self.ledger(state.group), state.ref.uid, Round()
            # Those of a Service the spec no longer names too; and the spec's own, whose removal may be final.
            owner_ids = pod_owner_ids(state.spec, pod.uid) + [
                o for o in ledger.owner_ids(uid) if o.startswith("endpoint/") and endpoint_parts(o)[1] == pod.uid
            ]
            for owner_id in dict.fromkeys(owner_ids):
                server = ledger.server_of((uid, owner_id))
                if server is not None:
                    # Its deletion does not exist yet: its start is set once the watches see it (if they do).
                    leave(ledger, (uid, owner_id), "deletion-gate", None, round_)
                    entry = ledger.entries.get(server)
                    if entry is not None and entry.removal is not None and not state.spec.dry_run:
                        out.append((ledger, server))  # it leaves; another live owner would have kept it
                elif (removed := ledger.removed_server((uid, owner_id))) is not None and not state.spec.dry_run:
                    # Taken out already (after a takeover, the new leader's pipeline can finish an earlier
                    # leader's removal before this hold looks): a listing confirms it is out.
                    out.append((ledger, removed))
            self._finish(state, round_, repair=False)
        return out

    def _call_off_looks(self, pod_uid: str) -> None:
        """The look for an earlier let-through of the pod, due or already asking the API server, answers for that
        one only: with a new hold of the pod under way, or a new deletion let through (a retried eviction, say),
        its "live" would put the servers back into rotation as the pod goes away. Whoever calls this expects the
        deletion again (or holds it: its answer does), and that look decides."""
        if pod_uid in self._expected:
            self._expected.pop(pod_uid).cancel()
        if pod_uid in self._looking:
            self._looking.pop(pod_uid).cancel()

    def expect_deletion(self, namespace: str, pod_uid: str) -> None:
        """The gate let the pod's deletion go ahead: unless it is going away by undo_after_seconds (the watches,
        then the API server itself: a watch may lag), its deletion never came, and it holds its servers again
        (PRODUCT.md 3.13)."""
        self._call_off_looks(pod_uid)

        async def look() -> None:
            assert self.view is not None
            pod = self.view.pod(namespace, pod_uid)
            if pod is None or pod.going_away or pod_uid not in self.gated:
                return
            if self.confirm_live is not None and not await self.confirm_live(namespace, pod.name, pod_uid):
                return
            now_ = self.view.pod(namespace, pod_uid)
            if now_ is not None and not now_.going_away and pod_uid in self.gated:
                self.ungate(now_)

        def later() -> None:
            self._expected.pop(pod_uid, None)
            task = asyncio.create_task(look(), name=f"deletion-of-{pod_uid}")
            self._looking[pod_uid] = task
            task.add_done_callback(
                lambda t: self._looking.pop(pod_uid, None) if self._looking.get(pod_uid) is t else None
            )

        self._expected[pod_uid] = asyncio.get_running_loop().call_later(self.settings.undo_after_seconds, later)

    def ungate(self, pod: PodView) -> None:
        """A pod the gate took out is live after all: every owner of it holds its server again. A removal not sent
        is called off, one sent is undone once it ends, one done already is undone now (engine/decisions.py)."""
        if self.stopped:
            return
        self.gated.discard(pod.uid)
        log.warning(
            "pod %s/%s was not deleted after the gate let its deletion go: its servers go back", pod.namespace, pod.name
        )
        for state in self._in_namespace(pod.namespace):
            ledger, uid = self.ledger(state.group), state.ref.uid
            if any([ledger.revive((uid, owner_id)) for owner_id in pod_owner_ids(state.spec, pod.uid)]):
                # A removal called off here is no round's change: without this write, status would keep it pending
                # (and a successor would send it).
                self.writer.soon(state)
        self.pod_changed(pod, deleted=False)

    def in_group_changed(self, ledger: GroupLedger, servers: Iterable[Server]) -> None:
        """What the group shows of these servers changed or was read again: their live owners are looked at again
        (an addition may be due: registration, an undo) and so are their pods' readiness gates."""
        if self.stopped or self.view is None:
            return
        pods: dict[str, str] = {}  # pod UID -> namespace
        endpoints: dict[tuple[str, str], set[str]] = {}  # (namespace, Service) -> owner keys
        statics: dict[str, list[Server]] = {}  # resource UID -> its static servers
        for server in servers:
            entry = ledger.entries.get(server)
            if entry is None:
                continue
            for (uid, owner_id), owner in entry.owners.items():
                state = self.resources.get(uid)
                if state is None or owner.leaving:
                    continue
                if owner.source == "pod":
                    pods[owner_id] = state.ref.namespace
                elif owner.source == "endpoint":
                    service, key = endpoint_parts(owner_id)
                    endpoints.setdefault((state.ref.namespace, service), set()).add(key)
                    if owner.name:
                        pods[key] = state.ref.namespace
                else:
                    statics.setdefault(uid, []).append(server)
        for (namespace, service), keys in endpoints.items():
            self.endpoints_changed(namespace, service, keys)
        for pod_uid, namespace in pods.items():
            pod = self.view.pod(namespace, pod_uid)
            if pod is not None:
                self.pod_changed(pod, deleted=False)
        for uid, static in statics.items():
            state = self.resources[uid]
            round_ = Round()
            for server in static:
                self._decider.apply(state, ledger, Seen(f"static/{server.compact}", server, "static"), round_)
            self._finish(state, round_, repair=False)

    def group_read(self, key: GroupKey, listed: Mapping[Server, tuple[str, int | None]], every: bool = True) -> None:
        """A read of the group (readiness gates' polls, anti-entropy): what it shows of our servers. ``every``: the
        owners of every server read are looked at again (a poll for a few awaited ones), else only those of
        servers whose status changed (a whole group's read)."""
        ledger = self.ledgers.get(key)
        if ledger is None:
            return
        shown: dict[Server, tuple[str, int | None]] = {}
        doubtful = []
        for server, (seen_status, weight) in listed.items():
            entry = ledger.entries.get(server)
            if entry is None or entry.change is not None:
                continue  # a change under way tells more than a read that may have begun before it
            if not every and seen_status == ABSENT and entry.in_group in IN_GROUP:
                doubtful.append(server)  # a page of a changing group can miss a server: read it alone first
                continue
            shown[server] = (seen_status, weight)
        if doubtful and self.readiness is not None:
            self.readiness.confirm(key, doubtful)
        changed = [s for s, (seen, weight) in shown.items() if ledger.seen_in_group(s, seen, weight)]
        if changed:
            self._status_soon([e for s in changed if (e := ledger.entries.get(s)) is not None], members=True)
        self.in_group_changed(ledger, shown if every else changed)

    # -- internals --------------------------------------------------------------------------------------------

    def _consider_gate(self, state: ResourceState, pod: PodView) -> None:
        if self.readiness is None or not pod.declares(state.ref.name):
            return
        ledger, uid = self.ledger(state.group), state.ref.uid
        keys = [(uid, owner_id) for owner_id in pod_owner_ids(state.spec, pod.uid)]
        entries = []
        for key in keys:
            server = ledger.server_of(key)
            owner = ledger.owner(key)
            if server is not None and owner is not None and not owner.leaving:
                entries.append(ledger.entries[server])
        self.readiness.consider(state.ref.name, ledger, pod, entries)

    def _view(self) -> LiveView | None:
        return self.view

    def _project(self, state: ResourceState) -> dict[str, Any]:
        return status.to_status(state, self.ledger(state.group))

    def _in_namespace(self, namespace: str) -> list[ResourceState]:
        return [s for s in self.resources.values() if s.ref.namespace == namespace and not s.deleting]

    def _endpoints(self, state: ResourceState, round_: Round, keys: Iterable[str] | None = None) -> None:
        """The resource's endpoint owners against the slices: all of them, or those of the owner ``keys`` only."""
        assert self.view is not None
        namespace, service = state.ref.namespace, state.spec.service_name
        ledger = self.ledger(state.group)
        pod_of = functools.partial(self.view.pod, namespace)
        if keys is None or service is None:
            scan = self._owners.endpoints(state.spec, namespace, self.view)
            round_.unmappable += scan.unmappable
            self._decider.reconcile(state, ledger, scan.owners, {"endpoint"}, pod_of, round_)
            return
        # And the owners whose removal became final since the last look: gone from the slices meanwhile, they are
        # settled now, and seen again, they are seen, as a look at every endpoint would.
        fresh = [endpoint_parts(i) for i in ledger.fresh_done(state.ref.uid)]
        looking = {*keys, *(key for of, key in fresh if of == service)}
        only = {endpoint_owner_id(service, key) for key in looking} | {endpoint_owner_id(of, key) for of, key in fresh}
        scan = self._owners.endpoints(state.spec, namespace, self.view, looking)
        round_.unmappable += scan.unmappable

        def look(owner_ids: Iterable[str]) -> Mapping[str, Seen]:
            assert self.view is not None
            wanted = [key for of, key in map(endpoint_parts, owner_ids) if of == service]
            return self._owners.endpoints(state.spec, namespace, self.view, wanted).owners

        self._decider.reconcile(state, ledger, scan.owners, {"endpoint"}, pod_of, round_, only, look)

    def _endpoint_keys_of(self, service: str, pod: PodView) -> set[str]:
        """The owner keys whose endpoints a pod's change can change: its UID, and the addresses of its Service's
        endpoints that name it without a UID."""
        assert self.view is not None
        named = self.view.endpoints_of_pod_named(pod.namespace, service, pod.name)
        return {pod.uid} | {ep.address for ep in named if not ep.pod_uid}

    def _recheck_endpoints(self, state: ResourceState) -> None:
        """The grace of missing endpoints ran out: those are judged again (the others have not changed)."""
        service = state.spec.service_name
        if self.resources.get(state.ref.uid) is state and service:
            missing = [endpoint_parts(i) for i in self._decider.missing(state.ref.uid)]
            keys = [key for of, key in missing if of == service]
            if keys:
                self.endpoints_changed(state.ref.namespace, service, keys)

    def _finish(self, state: ResourceState, round_: Round, repair: bool) -> None:
        ledger = self.ledger(state.group)
        if state.spec.gate_seconds is not None:
            for server in round_.removals:  # for albm_exposure_seconds{gate="true"}
                entry = ledger.entries.get(server)
                if entry is not None and entry.removal is not None:
                    entry.removal.gated = True
        self._effects.finish(state, ledger, round_, repair)


def _pending(servers: Iterable[tuple[GroupLedger, Server]]) -> list[Entry]:
    """The entries of these servers whose removal is still pending."""
    out = []
    for ledger, server in servers:
        entry = ledger.entries.get(server)
        if entry is not None and entry.removal is not None:
            out.append(entry)
    return out
