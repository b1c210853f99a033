"""An event is judged at the cost of what it touched (the owners of one pod, or of the endpoints that changed in one
EndpointSlice), and that judges exactly as looking at everything would: two reconcilers over one real store, one
told only what changed, the other made to look at every endpoint after every event, end every step of a random
walk with the same ledger and the same removals. And the last check before a call, read per server through the
store's indexes, finds the holders a scan of every resource finds."""

from __future__ import annotations

import copy
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from alb_membership.alb.models import Server
from alb_membership.cluster.store import ClusterStore
from alb_membership.model.ledger import GroupLedger, OwnerKey
from alb_membership.model.membership import ECI_ANNOTATION, PodView
from alb_membership.model.owners import pod_uid_of
from alb_membership.model.spec import Spec
from tests.unit.fakes import ENI, RecordingKube, RecordingReconciler, resource
from tests.unit.test_store_index import endpoint, eps, pod

BACKENDS = [
    {"serverType": "Ip", "port": 8080},
    {"serverType": "Eci", "port": 8080},
]


def resources(backend: dict[str, Any]) -> list[dict[str, Any]]:
    """A serviceRef resource and a podSelector one on the same group (they share servers)."""
    return [
        resource(uid="sgm-svc", namespace="a", name="svc", serviceRef={"name": "web"}, backend=backend),
        resource(
            uid="sgm-pods", namespace="a", name="pods", podSelector={"matchLabels": {"app": "web"}}, backend=backend
        ),
    ]


class Pair:
    """One store; ``told`` hears what changed, ``full`` looks at every endpoint after every event."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self.backend = "Ip"
        self.told = RecordingReconciler(store, RecordingKube(), endpoint_grace=0.0)  # type: ignore[arg-type]
        self.full = RecordingReconciler(store, RecordingKube(), endpoint_grace=0.0)  # type: ignore[arg-type]

    def on_pod(self, old: PodView | None, new: PodView | None) -> None:
        """As the runtime calls the reconciler; ``full`` also looks at every endpoint where a pod's change concerns
        endpoints: it is deleted or going away, or its instance or ENI is what its endpoints' servers name."""
        for rec in (self.told, self.full):
            if old is not None and (new is None or new.uid != old.uid):
                rec.pod_changed(old, deleted=True)
                if rec is self.full:
                    self.full.endpoints_changed("a", "web")
            if new is not None:
                rec.pod_changed(new, deleted=False)
                if rec is self.full and (new.going_away or self.backend != "Ip"):
                    self.full.endpoints_changed("a", "web")

    def on_slice(self, namespace: str, service: str, keys: frozenset[str]) -> None:
        self.told.endpoints_changed(namespace, service, keys)
        self.full.endpoints_changed(namespace, service)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with client.ApiClient() as api:
        holder: list[Pair] = []
        store = ClusterStore(
            api,
            (),
            ENI,
            lambda o, n: holder[0].on_pod(o, n),  # noqa: PLW0108 - the pair is made after the store
            lambda *a: holder[0].on_slice(*a),  # noqa: PLW0108
            lambda: None,
        )
        holder.append(Pair(store))
        store._interest.add("a")
        for informer in (*store.pod_watches, *store.slice_watches):
            informer.synced.set()
        yield holder[0]


def live_owners(rec: RecordingReconciler) -> dict[Server, list[OwnerKey]]:
    """Each server's live owners, as recorded."""
    (ledger,) = rec.ledgers.values()
    return {server: sorted(entry.live_owners()) for server, entry in ledger.entries.items() if entry.live_owners()}


def pending(rec: RecordingReconciler) -> set[str]:
    """The servers whose removal is decided."""
    return {e.server.compact for ledger in rec.ledgers.values() for e in ledger.pending()}


def scanned_holders(rec: RecordingReconciler, ledger: GroupLedger) -> dict[Server, dict[OwnerKey, Any]]:
    """The last check before a call as it was: every owner of every resource on the group, from a scan."""
    out: dict[Server, dict[OwnerKey, Any]] = {}
    assert rec.view is not None
    for body in rec.view.memberships():
        spec = Spec.parse(body["spec"])
        uid, ns = body["metadata"]["uid"], body["metadata"]["namespace"]
        for owner in rec._owners.current(spec, ns, rec.view).owners.values():
            if not owner.leaving and pod_uid_of(owner.owner_id, owner.source) not in rec.gated:
                out.setdefault(owner.server, {})[(uid, owner.owner_id)] = (owner.source, owner.name)
    return out


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b["serverType"])
async def test_told_only_what_changed_judges_as_looking_at_everything(pair: Pair, backend: dict[str, Any]) -> None:
    rng = random.Random(5 + len(backend["serverType"]))
    store = pair.store
    pods, slices = store.pod_watches[0], store.slice_watches[0]
    pair.backend = backend["serverType"]
    bodies = resources(backend)
    store.sgm_watches[0]._apply("ADDED", bodies[0])
    store.sgm_watches[0]._apply("ADDED", bodies[1])
    for rec in (pair.told, pair.full):
        for body in bodies:
            rec.start(body, repair=False)
    uids: dict[str, str] = {}
    made: dict[str, dict[str, Any]] = {}  # uid -> its body: a pod's IP and instance stay; terminating stays
    for step in range(800):
        k = rng.randrange(12)
        name = f"web-{k}"
        action = rng.random()
        if action < 0.35:
            if name not in uids or rng.random() < 0.15:
                uids[name] = f"{name}-{step}"  # made (again) under its name: a new UID
                made[uids[name]] = pod("a", name, uids[name], f"10.0.0.{rng.randrange(8)}", f"eci-{rng.randrange(8)}")
                made[uids[name]]["metadata"]["labels"] = {"app": "web"}
            body = made[uids[name]]
            if rng.random() < 0.3:
                body["metadata"].update(deletionTimestamp="2026-11-28T10:00:30Z", deletionGracePeriodSeconds=30)
            pods._apply("MODIFIED", copy.deepcopy(body))
        elif action < 0.45 and name in uids:
            pods._apply("DELETED", pod("a", name, uids[name], None))
        elif action < 0.9:
            members = []
            for j in rng.sample(range(12), rng.randrange(6)):
                ref = f"web-{j}"
                kind = rng.random()
                if kind < 0.6 and ref in uids:  # the pod's own IP
                    ip = made[uids[ref]]["status"]["podIP"]
                    members.append(endpoint(ip, ref, uids[ref], rng.random() < 0.2))
                elif kind < 0.8:
                    members.append(endpoint(f"10.0.0.{rng.randrange(8)}", ref, None, rng.random() < 0.2))
                else:
                    members.append(endpoint(f"10.0.0.{rng.randrange(8)}", terminating=rng.random() < 0.2))
            slices._apply("MODIFIED", eps("a", f"web-{rng.randrange(3)}", "web", members, rv=str(step)))
        else:
            slices._apply("DELETED", eps("a", f"web-{rng.randrange(3)}", "web", []))
        # The same removals decided, at every step.
        assert pending(pair.told) == pending(pair.full), f"step {step}: different removals decided"
        for rec in (pair.told, pair.full):  # every removal decided went to the group's pipeline
            assert pending(rec) <= set(rec.sent())
        if step % 20 == 19:
            # A look at everything may record a live owner that its own look made final (an endpoint that moved
            # while its old server left) at once or on its next look, depending on the owners' order; a look at
            # what an event touched does so on its next look. After one more look, the same live owners hold the
            # same servers. (Which leaving owners a decided removal lists may differ: the decisions do not.)
            for rec in (pair.told, pair.full):
                rec.endpoints_changed("a", "web")
            assert live_owners(pair.told) == live_owners(pair.full), f"step {step}: the live owners differ"
        ledger = pair.told.ledger(pair.told.resources["sgm-svc"].group)
        scanned = scanned_holders(pair.told, ledger)
        live = pair.told.directory.holders(ledger)
        for server in {*scanned, *(e.server for e in ledger.entries.values())}:
            assert live.get(server) == scanned.get(server), f"step {step}: holders of {server}"
        assert dict(pair.told.directory.holders(ledger).items()) == scanned
    assert pair.told.sent(), "the walk made removals"


async def test_an_eci_pods_endpoint_is_found_by_its_instance(pair: Pair) -> None:
    """An Eci server names the pod's ECI instance, not its IP: its endpoint's holder is found through the pod."""
    store = pair.store
    body = resources({"serverType": "Eci", "port": 8080})[0]
    store.sgm_watches[0]._apply("ADDED", body)
    web = pod("a", "web-0", "u1", "10.0.0.1", eci="eci-1")
    store.pod_watches[0]._apply("ADDED", web)
    store.slice_watches[0]._apply("ADDED", eps("a", "web-x", "web", [endpoint("10.0.0.1", "web-0", "u1")]))
    pair.told.start(body, repair=False)
    ledger = pair.told.ledger(pair.told.resources["sgm-svc"].group)
    holders = pair.told.directory.holders(ledger)
    assert holders.get(Server("Eci", "eci-1", 8080)) == {("sgm-svc", "endpoint/web/u1"): ("endpoint", "web-0")}
    assert Server("Eci", "10.0.0.1", 8080) not in holders
    assert ECI_ANNOTATION in store.pod("a", "u1").annotations  # type: ignore[union-attr]
