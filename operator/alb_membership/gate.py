"""The deletion gate (PRODUCT.md 3.10): an admission review of `DELETE pods` or `CREATE pods/eviction` for a member
pod of a resource with `deletionGate.enabled` starts the pod's removal at once (the same ledger, batching and
ClientTokens as every other trigger) and is answered only once every server of the pod is out of rotation
(Draining or gone), or the resource's `maxWaitSeconds` ran out. It never denies.

Why an admission hold: the kubelet starts a pod's termination (preStop, SIGTERM) the moment the API server sets its
deletionTimestamp, so a removal that starts then races the signal. Held here, the deletionTimestamp is set only
after the server stopped receiving new requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.ledger import GroupKey, GroupLedger
from alb_membership.membership import PodView
from alb_membership.metrics import Metrics
from alb_membership.reconciler import Reconciler
from alb_membership.store import ClusterStore

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
GROUP_READ_SECONDS = 0.3  # how often a group's servers are read while a gated removal's job runs


@dataclass(frozen=True)
class Review:
    uid: str
    namespace: str
    pod_name: str
    pod: PodView | None  # in the request for DELETE; looked up for an eviction
    dry_run: bool

    @classmethod
    def parse(cls, body: dict[str, Any], eni_annotation: str) -> Review:
        request = body.get("request") or {}
        old = request.get("oldObject")
        return cls(
            uid=request.get("uid", ""),
            namespace=request.get("namespace", ""),
            pod_name=request.get("name", ""),
            pod=PodView.from_body(old, eni_annotation) if old else None,
            dry_run=bool(request.get("dryRun")),
        )


def answer(uid: str, warning: str | None = None) -> dict[str, Any]:
    """Always allowed: the gate delays, it never refuses."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if warning:
        response["warnings"] = [warning]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def gated(store: ClusterStore, review: Review, reconciler: Reconciler) -> tuple[float, set[str]] | None:
    """How long this pod's deletion may be held (the longest maxWaitSeconds among gated resources that pick it)
    and which resources those are; None when none does (answered at once). Read from the store, so a standby can
    tell too."""
    pod = review.pod or find_pod(store, review.namespace, review.pod_name)
    if pod is None or pod.going_away:
        return None
    picked = [
        (spec.gate_seconds, uid)
        for uid, spec in reconciler.specs_in(store.memberships(), review.namespace)
        if spec.gate_seconds is not None and reconciler.picks(spec, review.namespace, pod)
    ]
    return (max(w for w, _ in picked), {uid for _, uid in picked}) if picked else None


def find_pod(store: ClusterStore, namespace: str, name: str) -> PodView | None:
    return next((p for p in store.pods(namespace) if p.name == name), None)


class Gate:
    def __init__(
        self,
        reconciler: Reconciler,
        store: ClusterStore,
        client_for: Callable[[str], AlbClient],
        metrics: Metrics,
        eni_annotation: str,
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._client_for = client_for
        self._metrics = metrics
        self._eni_annotation = eni_annotation
        self._listed: dict[GroupKey, tuple[float, set[Server]]] = {}  # group -> (when read, servers in rotation)

    async def review(self, body: dict[str, Any]) -> dict[str, Any]:
        review = Review.parse(body, self._eni_annotation)
        started = time.monotonic()
        found = None if review.dry_run else gated(self._store, review, self._reconciler)
        if found is None:
            self._metrics.gate_outcomes.labels("not-a-member").inc()
            return answer(review.uid)
        wait, uids = found
        pod = review.pod or find_pod(self._store, review.namespace, review.pod_name)
        assert pod is not None
        try:
            await asyncio.wait_for(self._hold(pod, uids), wait)
        except TimeoutError:
            held = time.monotonic() - started
            self._metrics.gate_outcomes.labels("timed-out").inc()
            self._metrics.gate_hold_seconds.observe(held)
            log.warning(
                "deletion of pod %s/%s let through after %.1fs: its servers are not out of rotation yet",
                review.namespace,
                review.pod_name,
                held,
            )
            return answer(
                review.uid, f"alb-membership-operator: servers of this pod still in rotation after {held:.1f}s"
            )
        held = time.monotonic() - started
        self._metrics.gate_outcomes.labels("confirmed").inc()
        self._metrics.gate_hold_seconds.observe(held)
        self._metrics.exposure_seconds.labels("true").observe(0.0)
        log.info(
            "deletion of pod %s/%s held %.2fs: its servers are out of rotation", review.namespace, review.pod_name, held
        )
        return answer(
            review.uid, f"alb-membership-operator: held {held:.1f}s until this pod's servers were out of rotation"
        )

    async def _hold(self, pod: PodView, uids: set[str]) -> None:
        # Just after a takeover, kopf may not have loaded every resource yet (with its status: pending removals).
        while True:
            if uids <= self._reconciler.resources.keys():
                break
            await asyncio.sleep(POLL_SECONDS)
        pending = self._reconciler.gate(pod)
        while pending:
            pending = [(ledger, s) for ledger, s in pending if not await self._is_out(ledger, s)]
            if pending:
                await asyncio.sleep(POLL_SECONDS)

    async def _is_out(self, ledger: GroupLedger, server: Server) -> bool:
        entry = ledger.entries.get(server)
        if entry is None or entry.removal is None:
            return True  # removed, or it stays because another live owner holds it: nothing to wait for
        if entry.removal.job_id is None:
            return False  # not accepted yet
        # Accepted: out of rotation as soon as the group shows it Draining or gone, which may be long before the
        # job ends (when the job waits out the drain).
        read_at, in_rotation = self._listed.get(ledger.key, (0.0, set()))
        if time.monotonic() - read_at > GROUP_READ_SECONDS:
            listed = await self._client_for(ledger.key[0]).list_server_group_servers(ledger.group_id)
            in_rotation = Server.in_rotation(listed)
            self._listed[ledger.key] = (time.monotonic(), in_rotation)
        return server not in in_rotation
