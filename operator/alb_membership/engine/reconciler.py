"""Decides who owns which server and who must leave. Plain code: kopf handlers call it with what they saw, and it
reads the rest from a ClusterView.

Rules (PRODUCT.md 3.1, 3.7-3.9):
- Owners: pods picked by podSelector, endpoints of serviceRef (across all its EndpointSlices), static servers.
- An owner leaves when its pod is terminating, terminal or gone, its endpoint terminating or gone, or its static
  server is dropped from the spec. The server is removed when no owner of it is live (the ledger's rule).
- A spec edit that stops picking a live pod or endpoint releases it: no longer tracked, never removed.
- A pod first seen already terminal is never recorded: its IP went back to the pool.
- An endpoint missing from every slice while its pod is live, or one without a pod, is judged only after a grace
  period: EndpointSlice updates for a move between slices do not arrive together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from alb_membership.alb.models import Server
from alb_membership.cluster.notices import Notices
from alb_membership.cluster.status_writer import StatusWriter
from alb_membership.cluster.view import ClusterView
from alb_membership.engine.pipeline import GroupPipeline, Holders, Services
from alb_membership.metrics import Metrics
from alb_membership.model import status
from alb_membership.model.health import group_missing, set_health
from alb_membership.model.ledger import Entry, GroupKey, GroupLedger, OwnerKey, now
from alb_membership.model.membership import (
    PodView,
    Seen,
    UnmappablePod,
    endpoint_owners,
    endpoint_parts,
    pod_owner,
    server_for,
    static_owners,
)
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import ResourceState

log = logging.getLogger(__name__)

MAX_WARNED = 10_000
GATED_SECONDS = 60.0  # longer than any hold (25 s) plus the deletion's own way through the API server
LEAK_TRIGGERS = frozenset({"pod-gone", "endpoint-gone", "spec-change"})


class LiveView(ClusterView, Protocol):
    def memberships(self) -> Iterable[Mapping[str, Any]]:
        """Every ServerGroupMembership: metadata (namespace, name, uid, deletionTimestamp) and spec."""
        ...


@dataclass(frozen=True)
class ReconcilerSettings:
    default_region: str | None = None
    eni_annotation: str = "k8s.aliyun.com/eni-id"
    endpoint_grace_seconds: float = 2.0


@dataclass
class _Round:
    """What one pass over a resource decided, told to people and Prometheus once at its end."""

    removals: list[Server]
    released: list[str]
    changed: bool = False


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
        self._services_for = services_for
        self.notices = notices
        self._metrics = metrics
        self._warned: set[tuple[str, str]] = set()
        self._missing: dict[OwnerKey, float] = {}  # endpoint owners absent from every slice, since when
        self._rechecks: dict[str, asyncio.TimerHandle] = {}  # resource UID -> its endpoints' next look
        # Set once this replica stops acting (shutdown, Lease given up): events still arriving change nothing.
        self.stopped = False
        # Pods whose deletion the gate holds: live still, but no longer holders of their servers. Pod UID -> until
        # when (a deletion refused after the gate, by a PodDisruptionBudget say, lets its pod count again then).
        self._gated: dict[str, float] = {}

    # -- resources -------------------------------------------------------------------------------------------

    def group_key(self, spec: Spec) -> GroupKey:
        return (spec.region or self.settings.default_region or "", spec.server_group_id)

    def ledger(self, key: GroupKey) -> GroupLedger:
        ledger = self.ledgers.get(key)
        if ledger is None:
            ledger = self.ledgers[key] = GroupLedger(key)
        return ledger

    def pipeline(self, key: GroupKey) -> GroupPipeline:
        pipeline = self.pipelines.get(key)
        if pipeline is None:
            pipeline = self.pipelines[key] = GroupPipeline(self.ledger(key), self, self._services_for(key[0]))
        return pipeline

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
        pending = status.restore(self.ledger(state.group), state.ref.uid, recorded)
        self.writer.known(state, recorded)
        self.resources[state.ref.uid] = state
        if pending:
            self.pipeline(state.group).enqueue(pending)
        return state

    def start(self, body: Mapping[str, Any], repair: bool) -> ResourceState:
        """On create, on a spec change, and on operator start (``repair``: whatever was missed while no operator
        ran is a leak to repair): catch up with the cluster as it is now."""
        state = self.load(body)
        state.spec = Spec.parse(body["spec"])
        state.generation = int(body["metadata"].get("generation", 0))
        assert self.view is not None, "the view is set at startup"
        if self.stopped:
            return state
        self.sync(state, self.view, repair)
        if "Ready" not in state.conditions:
            set_health(state, None)
        self.writer.soon(state)
        return state

    def sync(self, state: ResourceState, view: ClusterView, repair: bool) -> None:
        """Compares everything the resource owns with the cluster: every source, every recorded owner."""
        if state.deleting or self.stopped:
            return
        pods = list(view.pods(state.ref.namespace))
        self._reconcile(state, self._current_owners(state, view, pods), {"pod", "endpoint", "static"}, pods, repair)

    def repair(self, state: ResourceState, listed: Iterable[PodView], recorded_before: set[str]) -> None:
        """Anti-entropy, from pods listed afresh: a pod recorded before the list began and absent from it was
        deleted unseen, and leaves. Only absence counts: a list is older than the watches' latest events, so
        nothing it shows as present is recorded from it."""
        if state.deleting or self.stopped:
            return
        present = {p.uid for p in listed}
        ledger = self.ledger(state.group)
        round_ = _Round([], [])
        for owner_id in ledger.owner_ids(state.ref.uid):
            owner = ledger.owner((state.ref.uid, owner_id))
            if owner is None or owner.leaving or owner_id not in recorded_before:
                continue
            pod_uid = owner_id if owner.source == "pod" else endpoint_parts(owner_id)[1] if owner.name else None
            if pod_uid is not None and pod_uid not in present:
                self._leave(ledger, (state.ref.uid, owner_id), "pod-gone", None, round_)
        self._finish_round(state, round_, repair=True)

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
        round_ = _Round([], [])
        for owner_id in ledger.owner_ids(uid):
            owner = ledger.owner((uid, owner_id))
            if owner is None or owner.leaving:
                continue
            if state.spec.deletion_policy == "Remove":
                self._leave(ledger, (uid, owner_id), "resource-deleted", None, round_)
            else:
                self._release(ledger, (uid, owner_id), owner.name, round_)
        self._finish_round(state, round_, repair=False)
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
        self._warned = {w for w in self._warned if w[0] != uid}
        self._missing = {k: v for k, v in self._missing.items() if k[0] != uid}
        recheck = self._rechecks.pop(uid, None)
        if recheck is not None:
            recheck.cancel()

    # -- events -----------------------------------------------------------------------------------------------

    def pod_changed(self, pod: PodView, deleted: bool) -> None:
        if self.stopped:
            return
        for state in self._in_namespace(pod.namespace):
            seen = pod_owner(state.spec, pod, self._mapper(state))
            key = (state.ref.uid, pod.uid)
            round_ = _Round([], [])
            ledger = self.ledger(state.group)
            if deleted:
                self._leave(ledger, key, "pod-deleted", pod.deletion_started or now(), round_)
                ledger.settle(key)
            elif seen is not None:
                self._apply(state, ledger, seen, round_)
            elif ledger.server_of(key) is not None:
                self._unseen_pod(state, ledger, key, pod, round_)
            if state.spec.service_name and (deleted or pod.going_away):
                self._sync_endpoints(state, round_)  # its endpoints leave with it, whatever the slices say yet
            self._finish_round(state, round_, repair=False)

    def endpoints_changed(self, namespace: str, service: str) -> None:
        if self.stopped:
            return
        for state in self._in_namespace(namespace):
            if state.spec.service_name == service:
                round_ = _Round([], [])
                self._sync_endpoints(state, round_)
                self._finish_round(state, round_, repair=False)

    # -- the deletion gate -------------------------------------------------------------------------------------

    def gate(self, pod: PodView) -> list[tuple[GroupLedger, Server]]:
        """A gated resource's member pod is about to be deleted: it leaves now, before the deletion exists (trigger
        deletion-gate), as an owner of every resource that picks it, gated or not (another resource's owner of
        the same pod must not hold its server). Returns the servers to wait for."""
        out: list[tuple[GroupLedger, Server]] = []
        if self.stopped:
            return out
        self._gated[pod.uid] = time.monotonic() + GATED_SECONDS
        for state in self._in_namespace(pod.namespace):
            ledger, uid, round_ = self.ledger(state.group), state.ref.uid, _Round([], [])
            owner_ids = [pod.uid] + [
                o for o in ledger.owner_ids(uid) if o.startswith("endpoint/") and endpoint_parts(o)[1] == pod.uid
            ]
            for owner_id in owner_ids:
                server = ledger.server_of((uid, owner_id))
                if server is not None:
                    self._leave(ledger, (uid, owner_id), "deletion-gate", now(), round_)
                    entry = ledger.entries.get(server)
                    if entry is not None and entry.removal is not None and not state.spec.dry_run:
                        out.append((ledger, server))  # it leaves; another live owner would have kept it
            self._finish_round(state, round_, repair=False)
        return out

    @staticmethod
    def specs_in(bodies: Iterable[Mapping[str, Any]], namespace: str) -> list[tuple[str, Spec]]:
        """(UID, spec) of the resources of ``namespace`` that are not being deleted."""
        return [
            (b["metadata"]["uid"], Spec.parse(b["spec"]))
            for b in bodies
            if b["metadata"]["namespace"] == namespace and not b["metadata"].get("deletionTimestamp")
        ]

    def picks(self, spec: Spec, namespace: str, pod: PodView) -> bool:
        """Whether ``spec`` makes ``pod`` a member: by its selector, or as an endpoint of its Service."""
        if spec.backend is None:
            return False
        if spec.pod_selector is not None and spec.pod_selector.matches(pod.labels):
            return True
        if spec.service_name is not None and self.view is not None:
            return any(ep.pod_uid == pod.uid for ep in self.view.endpoints(namespace, spec.service_name))
        return False

    # -- what the pipeline asks (pipeline.Directory) -------------------------------------------------------------

    def states_of(self, entries: Iterable[Entry]) -> list[ResourceState]:
        uids = sorted({uid for e in entries for uid, _ in e.leaving_owners()})
        return [self.resources[uid] for uid in uids if uid in self.resources]

    def holders(self, ledger: GroupLedger) -> Holders:
        out: Holders = {}
        if self.view is None:
            return out
        clock = time.monotonic()
        self._gated = {uid: until for uid, until in self._gated.items() if until > clock}
        for body in self.view.memberships():
            meta = body["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            spec = Spec.parse(body["spec"])
            if self.group_key(spec) != ledger.key:
                continue
            state = ResourceState(Ref(meta["namespace"], meta["name"], meta["uid"]), spec, ledger.key)
            pods = list(self.view.pods(state.ref.namespace))
            for owner in self._current_owners(state, self.view, pods).values():
                pod_uid = endpoint_parts(owner.owner_id)[1] if owner.source == "endpoint" else owner.owner_id
                if not owner.leaving and pod_uid not in self._gated:
                    out.setdefault(owner.server, {})[(state.ref.uid, owner.owner_id)] = (owner.source, owner.name)
        return out

    def dry_run(self, entry: Entry) -> bool:
        states = self.states_of([entry])
        return bool(states) and all(s.spec.dry_run for s in states)

    async def flush(self, states: Iterable[ResourceState]) -> None:
        for state in states:
            await self.writer.flush(state)

    def changed(self, states: Iterable[ResourceState]) -> None:
        for state in states:
            self.writer.soon(state)

    # -- internals --------------------------------------------------------------------------------------------

    def _project(self, state: ResourceState) -> dict[str, Any]:
        return status.to_status(state, self.ledger(state.group))

    def _in_namespace(self, namespace: str) -> list[ResourceState]:
        return [s for s in self.resources.values() if s.ref.namespace == namespace and not s.deleting]

    def _current_owners(self, state: ResourceState, view: ClusterView, pods: list[PodView]) -> dict[str, Seen]:
        """Every owner the resource's spec picks in the cluster now: pods, endpoints, static servers."""
        seen = self._pod_owners(state, pods)
        seen.update(self._endpoint_owners(state, view, pods))
        seen.update(static_owners(state.spec))
        return seen

    def _pod_owners(self, state: ResourceState, pods: Iterable[PodView]) -> dict[str, Seen]:
        mapper = self._mapper(state)
        return {o.owner_id: o for o in (pod_owner(state.spec, p, mapper) for p in pods) if o is not None}

    def _endpoint_owners(self, state: ResourceState, view: ClusterView, pods: Iterable[PodView]) -> dict[str, Seen]:
        if state.spec.service_name is None:
            return {}
        endpoints = view.endpoints(state.ref.namespace, state.spec.service_name)
        return endpoint_owners(state.spec, endpoints, {p.name: p for p in pods}, self._mapper(state))

    def _sync_endpoints(self, state: ResourceState, round_: _Round) -> None:
        assert self.view is not None
        pods = list(self.view.pods(state.ref.namespace))
        seen = self._endpoint_owners(state, self.view, pods)
        self._reconcile(state, seen, {"endpoint"}, pods, repair=False, round_=round_)

    def _reconcile(
        self,
        state: ResourceState,
        seen: dict[str, Seen],
        sources: set[str],
        pods: list[PodView],
        repair: bool,
        round_: _Round | None = None,
    ) -> None:
        own_round = round_ is None
        round_ = round_ or _Round([], [])
        ledger = self.ledger(state.group)
        uid = state.ref.uid
        for seen_owner in seen.values():
            self._apply(state, ledger, seen_owner, round_)
        by_uid = {p.uid: p for p in pods}
        for owner_id, source in ledger.done_ids(uid):
            if owner_id not in seen and source in sources:
                ledger.settle((uid, owner_id))
        for owner_id in ledger.owner_ids(uid):
            key = (uid, owner_id)
            owner = ledger.owner(key)
            if owner_id in seen or owner is None or owner.leaving or owner.source not in sources:
                continue
            if owner.source == "pod":
                self._unseen_pod(state, ledger, key, by_uid.get(owner_id), round_)
            elif owner.source == "endpoint":
                self._unseen_endpoint(state, ledger, key, owner.name, by_uid, round_)
            else:
                self._leave(ledger, key, "spec-change", None, round_)
        if own_round:
            self._finish_round(state, round_, repair)

    def _apply(self, state: ResourceState, ledger: GroupLedger, seen: Seen, round_: _Round) -> None:
        key = (state.ref.uid, seen.owner_id)
        self._missing.pop(key, None)
        if not seen.leaving:
            known = ledger.server_of(key)
            if known is not None and known != seen.server:
                round_.released.append(f"{seen.name or seen.owner_id} ({known}, now {seen.server})")
            round_.changed |= ledger.hold(key, seen.server, seen.source, seen.name)
        elif ledger.server_of(key) is None and seen.terminal:
            return  # never recorded while it held the IP, and the IP may be someone else's now
        elif ledger.leave(key, seen.trigger or "unknown", seen.deletion_started, seen.server, seen.source, seen.name):
            round_.removals.append(ledger.server_of(key) or seen.server)
        else:
            round_.changed = True

    def _unseen_pod(
        self, state: ResourceState, ledger: GroupLedger, key: OwnerKey, pod: PodView | None, round_: _Round
    ) -> None:
        if pod is None:
            self._leave(ledger, key, "pod-gone", None, round_)
        elif pod.going_away:
            self._leave(ledger, key, "pod-terminating", pod.deletion_started, round_)
        else:
            self._release(ledger, key, pod.name, round_)

    def _unseen_endpoint(
        self,
        state: ResourceState,
        ledger: GroupLedger,
        key: OwnerKey,
        pod_name: str | None,
        pods_by_uid: Mapping[str, PodView],
        round_: _Round,
    ) -> None:
        service, pod_uid = endpoint_parts(key[1])
        if state.spec.service_name != service or state.spec.backend is None:
            self._release(ledger, key, pod_name or key[1], round_)  # its Service is no longer referenced
            return
        pod = pods_by_uid.get(pod_uid)
        if pod_name and pod is None:
            self._leave(ledger, key, "endpoint-gone", None, round_)  # its pod is gone
            return
        if pod is not None and pod.going_away:
            self._leave(ledger, key, "endpoint-gone", pod.deletion_started, round_)
            return
        first = self._missing.setdefault(key, time.monotonic())
        left = first + self.settings.endpoint_grace_seconds - time.monotonic()
        if left > 0:
            self._recheck_endpoints_later(state, left)
            return
        del self._missing[key]
        if pod is not None:
            self._release(ledger, key, pod.name, round_)  # the Service no longer selects a live pod
        else:
            self._leave(ledger, key, "endpoint-gone", None, round_)

    def _recheck_endpoints_later(self, state: ResourceState, delay: float) -> None:
        """One look per resource, however many endpoints are missing."""
        if state.ref.uid in self._rechecks:
            return

        def recheck() -> None:
            self._rechecks.pop(state.ref.uid, None)
            if self.resources.get(state.ref.uid) is state and state.spec.service_name:
                self.endpoints_changed(state.ref.namespace, state.spec.service_name)

        self._rechecks[state.ref.uid] = asyncio.get_running_loop().call_later(delay + 0.05, recheck)

    def _leave(self, ledger: GroupLedger, key: OwnerKey, trigger: str, started: Any, round_: _Round) -> None:
        server = ledger.server_of(key)
        if server is None:
            return
        if ledger.leave(key, trigger, started):
            round_.removals.append(server)
        round_.changed = True

    def _release(self, ledger: GroupLedger, key: OwnerKey, name: str | None, round_: _Round) -> None:
        if ledger.release(key):
            round_.released.append(name or key[1])
            round_.changed = True

    def _finish_round(self, state: ResourceState, round_: _Round, repair: bool) -> None:
        ledger = self.ledger(state.group)
        if round_.removals:
            for server in round_.removals:
                entry = ledger.entries.get(server)
                trigger = entry.removal.trigger if entry and entry.removal else "?"
                log.info("%s: %s leaves %s (%s)", state.ref, server, ledger.group_id, trigger)
            self.pipeline(state.group).enqueue(round_.removals)
            leaks = [
                s
                for s in round_.removals
                if (e := ledger.entries.get(s)) and e.removal and e.removal.trigger in LEAK_TRIGGERS
            ]
            if repair and leaks:
                self._metrics.leaks_repaired.inc(len(leaks))
                self.notices.post(
                    [state],
                    "Normal",
                    "LeakRepaired",
                    f"{len(leaks)} server(s) whose owners went away unseen leave {ledger.group_id}: "
                    + ", ".join(str(s) for s in leaks[:10]),
                )
        if round_.released:
            self._metrics.released.inc(len(round_.released))
            self.notices.post(
                [state],
                "Normal",
                "MemberReleased",
                f"{len(round_.released)} live member(s) no longer picked by the spec are released, not removed "
                f"(they stay in {ledger.group_id}): " + ", ".join(sorted(round_.released)[:10]),
            )
        if round_.removals or round_.released or round_.changed:
            self.writer.soon(state)
        self._metrics.ledger_identities.set(sum(len(g.entries) for g in self.ledgers.values()))

    def _mapper(self, state: ResourceState) -> Callable[[str | None, Mapping[str, str], PodView | None], Server | None]:
        def map_server(ip: str | None, annotations: Mapping[str, str], pod: PodView | None) -> Server | None:
            if state.spec.backend is None:
                return None
            try:
                return server_for(state.spec.backend, ip, annotations, self.settings.eni_annotation)
            except UnmappablePod as exc:
                name = pod.name if pod is not None else ip or "?"
                if (state.ref.uid, name) not in self._warned:
                    if len(self._warned) >= MAX_WARNED:
                        self._warned.clear()
                    self._warned.add((state.ref.uid, name))
                    self.notices.post(
                        [state], "Warning", "UnmappablePod", f"pod {name} cannot be mapped to an ALB server: {exc}"
                    )
                return None

        return map_server
