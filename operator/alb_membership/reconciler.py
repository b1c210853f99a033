"""Decides who is a member and who must leave. Plain code: kopf handlers call it with what they saw.

Triggers (PRODUCT.md 3.1): a member pod gets a deletionTimestamp, turns Succeeded/Failed, stops matching the
selector, or is deleted outright; an endpoint of serviceRef turns terminating or disappears; a static server is
dropped from spec.servers; the resource is deleted with deletionPolicy Remove. Membership is keyed by pod UID,
so a new pod reusing an old pod's IP is a different member with a different ClientToken.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.membership import EndpointView, PodView, UnmappablePod, server_for
from alb_membership.pipeline import GroupPipeline, set_health
from alb_membership.spec import Spec
from alb_membership.state import ACTIVE, REMOVED, Member, MembershipState, Pending, now
from alb_membership.status_writer import StatusWriter

log = logging.getLogger(__name__)

Warn = Callable[[MembershipState, str, str], None]


class Reconciler:
    def __init__(
        self,
        writer: StatusWriter,
        pipeline_for: Callable[[MembershipState], GroupPipeline],
        warn: Warn,
        eni_annotation: str,
    ) -> None:
        self.states: dict[str, MembershipState] = {}
        self._writer = writer
        self._pipeline_for = pipeline_for
        self._warn = warn
        self._eni_annotation = eni_annotation
        self._warned: set[tuple[str, str]] = set()

    # -- resources -----------------------------------------------------------------------------------------------

    def state_for(self, body: Mapping[str, Any]) -> MembershipState:
        uid = body["metadata"]["uid"]
        state = self.states.get(uid)
        if state is None:
            state = self.states[uid] = MembershipState.from_resource(dict(body))
        return state

    def start(
        self, body: Mapping[str, Any], pods: Iterable[PodView], endpoints: Iterable[EndpointView] | None
    ) -> MembershipState:
        """On create and on operator start: catch up with everything that happened while nobody watched."""
        state = self.state_for(body)
        state.spec = Spec.parse(body["spec"])
        state.generation = int(body["metadata"].get("generation", 0))
        self._sync_static(state)
        present = {p.uid: p for p in pods if p.namespace == state.ref.namespace}
        for pod in present.values():
            self.pod_changed(state, pod, deleted=False)
        for member in list(state.members.values()):
            if member.source == "pod" and member.id not in present:
                if member.phase == REMOVED:
                    state.forget(member.id)
                elif member.phase == ACTIVE:  # deleted while no operator ran
                    self._decide(state, member.id, member.server, "pod-gone", None)
        if endpoints is not None:
            self.endpoints_changed(state, endpoints, {p.name: p for p in present.values()})
        if "Ready" not in state.conditions:
            set_health(state, None)
        # Removals recorded by an earlier operator go out again, with the ClientTokens they had.
        pending = [mid for mid in state.pending]
        if pending:
            self._pipeline_for(state).enqueue(state, pending)
        state.changed()
        self._writer.soon(state)
        return state

    def spec_changed(
        self, body: Mapping[str, Any], pods: Iterable[PodView], endpoints: Iterable[EndpointView] | None
    ) -> None:
        state = self.state_for(body)
        new = Spec.parse(body["spec"])
        dropped = {s.key for s in state.spec.servers} - {s.key for s in new.servers}
        state.spec = new
        state.generation = int(body["metadata"].get("generation", 0))
        for member in list(state.members.values()):
            if member.source == "static" and member.server.key in dropped and member.phase == ACTIVE:
                self._decide(state, member.id, member.server, "spec-change", None)
        self.start(body, pods, endpoints)

    def deleting(self, body: Mapping[str, Any]) -> bool:
        """Deletion with deletionPolicy Remove: every member leaves. True once nothing is left to do."""
        state = self.state_for(body)
        if state.spec.deletion_policy == "Retain":
            return True
        for member in list(state.members.values()):
            if member.phase == ACTIVE:
                self._decide(state, member.id, member.server, "resource-deleted", None)
        degraded = state.conditions.get("Degraded")
        if degraded is not None and degraded.status == "True" and degraded.reason == "ResourceNotFoundServerGroup":
            return True  # nothing can be removed from a group that does not exist
        return not state.pending

    def forget(self, uid: str) -> None:
        state = self.states.pop(uid, None)
        if state is not None:
            self._writer.forget(state)

    # -- pods ------------------------------------------------------------------------------------------------------

    def pod_changed(self, state: MembershipState, pod: PodView, deleted: bool) -> None:
        spec = state.spec
        member = state.members.get(pod.uid)
        if deleted and member is not None and member.phase == REMOVED:
            state.forget(pod.uid)
            self._writer.soon(state)
            return
        selected = spec.pod_selector is not None and spec.pod_selector.matches(pod.labels)
        if not selected and (member is None or member.source != "pod"):
            return
        server = member.server if member is not None else self._server(state, pod.ip, pod.annotations, pod)
        if server is None:
            return
        if deleted or pod.going_away or not selected:
            trigger = "pod-deleted" if deleted else ("pod-unselected" if not selected else "pod-terminating")
            started = pod.deletion_started or (now() if deleted else None)
            self._decide(state, pod.uid, server, trigger, started)
        elif state.observe(Member(pod.uid, server, "pod", pod.name)):
            self._writer.soon(state)

    # -- endpoints -------------------------------------------------------------------------------------------------

    def endpoints_changed(
        self, state: MembershipState, endpoints: Iterable[EndpointView], pods_by_name: Mapping[str, PodView]
    ) -> None:
        """``endpoints``: all endpoints of serviceRef across its EndpointSlices, as they are now."""
        if state.spec.service_name is None or state.spec.backend is None:
            return
        seen: set[str] = set()
        for ep in endpoints:
            member_id = ep.pod_uid or f"endpoint/{ep.address}"
            seen.add(member_id)
            member = state.members.get(member_id)
            if member is not None and member.phase != ACTIVE:
                continue
            pod = pods_by_name.get(ep.pod_name or "")
            annotations = pod.annotations if pod is not None else {}
            server = member.server if member is not None else self._server(state, ep.address, annotations, pod)
            if server is None:
                continue
            if ep.terminating:
                started = pod.deletion_started if pod is not None else None
                self._decide(state, member_id, server, "endpoint-terminating", started)
            elif state.observe(Member(member_id, server, "endpoint", ep.pod_name)):
                self._writer.soon(state)
        for member in list(state.members.values()):
            if member.source == "endpoint" and member.phase == ACTIVE and member.id not in seen:
                self._decide(state, member.id, member.server, "endpoint-gone", None)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _sync_static(self, state: MembershipState) -> None:
        for server in state.spec.servers:
            if state.observe(Member(f"static/{server.key}", server, "static")):
                self._writer.soon(state)

    def _server(
        self, state: MembershipState, ip: str | None, annotations: Mapping[str, str], pod: PodView | None
    ) -> Server | None:
        if state.spec.backend is None:
            return None
        try:
            return server_for(state.spec.backend, ip, annotations, self._eni_annotation)
        except UnmappablePod as exc:
            name = pod.name if pod is not None else ip or "?"
            if (state.ref.uid, name) not in self._warned:
                self._warned.add((state.ref.uid, name))
                self._warn(state, "UnmappablePod", f"pod {name} cannot be mapped to an ALB server: {exc}")
            return None

    def _decide(
        self, state: MembershipState, member_id: str, server: Server, trigger: str, started: dt.datetime | None
    ) -> None:
        if state.decide(Pending(member_id, server, trigger, decided_at=now(), deletion_started=started)):
            log.info("%s: %s leaves %s (%s)", state.ref, server, state.spec.server_group_id, trigger)
            self._writer.soon(state)
            self._pipeline_for(state).enqueue(state, [member_id])
