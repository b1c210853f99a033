"""The store's indexes (alb_membership.cluster.index) hold exactly what the watches' records hold, under every way
records change: added, updated, deleted, a relist that finds objects gone, a namespace filled or forgotten, a pod
deleted and made again under its name (a new UID), a slice moving to another Service. Each check compares every
indexed look-up with a scan of the records; a random walk of such changes keeps them equal at every step. And a
slice's update names exactly the owners whose endpoints changed."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from alb_membership.cluster.index import addresses
from alb_membership.cluster.informer import Source
from alb_membership.cluster.store import SERVICE_LABEL, ClusterStore
from alb_membership.model.membership import ECI_ANNOTATION, endpoint_key
from tests.unit.test_informer import Resp

ENI = "k8s.aliyun.com/eni-id"


def pod(ns: str, name: str, uid: str, ip: str | None, eci: str | None = None, rv: str = "5") -> dict[str, Any]:
    annotations = {ECI_ANNOTATION: eci} if eci else {}
    return {
        "metadata": {"namespace": ns, "name": name, "uid": uid, "resourceVersion": rv, "annotations": annotations},
        "status": {"podIP": ip, "phase": "Running"},
    }


def endpoint(ip: str, pod_name: str | None = None, uid: str | None = None, terminating: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip], "conditions": {"terminating": terminating}}
    if pod_name:
        out["targetRef"] = {"kind": "Pod", "name": pod_name, **({"uid": uid} if uid else {})}
    return out


def eps(
    ns: str, name: str, service: str, endpoints: list[dict[str, Any]], uid: str = "", rv: str = "5"
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            "uid": uid or f"uid-{name}",
            "labels": {SERVICE_LABEL: service},
            "resourceVersion": rv,
        },
        "endpoints": endpoints,
    }


class Heard:
    def __init__(self) -> None:
        self.slices: list[tuple[str, str, frozenset[str]]] = []

    def on_slice(self, namespace: str, service: str, keys: frozenset[str]) -> None:
        self.slices.append((namespace, service, keys))


@pytest.fixture
async def store() -> AsyncIterator[tuple[ClusterStore, Heard]]:
    heard = Heard()
    async with client.ApiClient() as api:
        s = ClusterStore(api, (), ENI, lambda o, n: None, heard.on_slice, lambda: None)
        s._interest.update({"a", "b"})
        for informer in (*s.pod_watches, *s.slice_watches):
            informer.synced.set()
        yield s, heard


def check(store: ClusterStore) -> None:
    """Every indexed look-up equals the scan of the records."""
    pods = [p for i in store.pod_watches for named in i.records.values() for p in named.values()]
    for p in pods:
        assert store.pod(p.namespace, p.uid) is p
        assert store.pod_named(p.namespace, p.name) is p
        for address in addresses(p):
            assert p in store.pods_at(p.namespace, address)
    for ns in ("a", "b"):
        uids = {p.uid for p in pods if p.namespace == ns}
        known = set(store._pods._by_uid.get(ns, {}))
        assert known == uids, f"the UID index of {ns} holds {known}, the records {uids}"
        for address, found in store._pods._at.get(ns, {}).items():
            assert {p.uid for p in found.values()} == {
                p.uid for p in pods if p.namespace == ns and address in addresses(p)
            }
    slices = [r for i in store.slice_watches for named in i.records.values() for r in named.values()]
    services = {(r.namespace, r.service) for r in slices}
    assert set(store._endpoints._services) == services, "no Service indexed without a slice"
    for ns, service in services:
        scanned = [ep for r in slices if (r.namespace, r.service) == (ns, service) for ep in r.endpoints]
        assert store.endpoints(ns, service) == scanned, "the slices' order, as the records keep it"
        for ep in scanned:
            assert store.endpoints_of(ns, service, endpoint_key(ep)) == [
                e for e in scanned if endpoint_key(e) == endpoint_key(ep)
            ]
            assert Counter(store.endpoints_at(ns, service, ep.address)) == Counter(
                e for e in scanned if e.address == ep.address
            )
            if ep.pod_name:
                assert Counter(store.endpoints_of_pod_named(ns, service, ep.pod_name)) == Counter(
                    e for e in scanned if e.pod_name == ep.pod_name
                )
        index = store._endpoints.service(ns, service)
        assert index is not None
        for terms in (index.by_key, index.by_address, index.by_pod_name):
            assert all(terms.values()) and all(all(lists.values()) for lists in terms.values()), "no empty leftovers"
        assert sum(len(v) for lists in index.by_key.values() for v in lists.values()) == len(scanned)


async def test_pods_by_uid_and_address_under_add_update_delete(store: tuple[ClusterStore, Heard]) -> None:
    s, _ = store
    pods = s.pod_watches[0]
    pods._apply("ADDED", pod("a", "web-0", "u1", "10.0.0.1"))
    pods._apply("ADDED", pod("a", "web-1", "u2", None))
    check(s)
    pods._apply("MODIFIED", pod("a", "web-1", "u2", "10.0.0.2", eci="eci-2"))  # got its IP and ECI instance
    assert [p.name for p in s.pods_at("a", "10.0.0.2")] == [p.name for p in s.pods_at("a", "eci-2")] == ["web-1"]
    check(s)
    pods._apply("DELETED", pod("a", "web-0", "u1", "10.0.0.1"))
    assert s.pod("a", "u1") is None and s.pods_at("a", "10.0.0.1") == []
    check(s)


async def test_a_pod_made_again_under_its_name_has_a_new_uid(store: tuple[ClusterStore, Heard]) -> None:
    """A StatefulSet's web-0: deleted and made again; across a watch gap, the new one simply replaces the old."""
    s, _ = store
    pods = s.pod_watches[0]
    pods._apply("ADDED", pod("a", "web-0", "u1", "10.0.0.1"))
    pods._apply("DELETED", pod("a", "web-0", "u1", "10.0.0.1"))
    pods._apply("ADDED", pod("a", "web-0", "u2", "10.0.0.1"))
    assert s.pod("a", "u1") is None and s.pod("a", "u2") is s.pod_named("a", "web-0")
    pods._apply("MODIFIED", pod("a", "web-0", "u3", "10.0.0.9"))  # replaced unseen (relist): u2 goes with it
    assert s.pod("a", "u2") is None and s.pods_at("a", "10.0.0.1") == []
    pods._apply("DELETED", pod("a", "web-0", "u2", "10.0.0.1"))  # a late delete of u2 spares u3
    assert s.pod("a", "u3") is not None
    check(s)


async def test_a_relist_drops_what_it_no_longer_finds_and_a_forgotten_namespace_leaves_nothing(
    store: tuple[ClusterStore, Heard],
) -> None:
    s, _ = store
    pods, slices = s.pod_watches[0], s.slice_watches[0]
    pods._apply("ADDED", pod("a", "web-0", "u1", "10.0.0.1"))
    pods._apply("ADDED", pod("a", "web-1", "u2", "10.0.0.2"))
    pods._apply("ADDED", pod("b", "api-0", "u3", "10.0.0.3"))
    slices._apply("ADDED", eps("a", "web-x", "web", [endpoint("10.0.0.1", "web-0", "u1")]))
    check(s)

    async def relisted(**q: Any) -> Resp:
        return Resp({"metadata": {"resourceVersion": "20"}, "items": [pod("a", "web-1", "u2", "10.0.0.7", rv="19")]})

    pods._source = Source(relisted)
    await pods._list()
    assert s.pod("a", "u1") is None and s.pod("b", "u3") is None
    assert [p.uid for p in s.pods_at("a", "10.0.0.7")] == ["u2"] and s.pods_at("a", "10.0.0.2") == []
    check(s)

    s._recount()  # no resource in a or b: their records, and their index entries, go
    assert s.pod("a", "u2") is None and s.endpoints("a", "web") == []
    assert not s._pods._by_uid and not s._pods._at and not s._endpoints._services
    check(s)

    async def filled(**q: Any) -> Resp:
        return Resp({"metadata": {"resourceVersion": "30"}, "items": [pod("a", "web-2", "u4", "10.0.0.4")]})

    s._interest.update({"a", "b"})
    await pods.fill("a", filled)
    assert s.pod("a", "u4") is s.pod_named("a", "web-2")
    check(s)


async def test_endpoints_by_service_key_address_and_pod_name(store: tuple[ClusterStore, Heard]) -> None:
    s, heard = store
    slices = s.slice_watches[0]
    one = [endpoint("10.0.0.1", "web-0", "u1"), endpoint("10.0.0.2", "web-1", "u2"), endpoint("10.0.0.9")]
    slices._apply("ADDED", eps("a", "web-x", "web", one))
    slices._apply("ADDED", eps("a", "web-y", "web", [endpoint("10.0.0.3", "web-2", "u3")]))
    slices._apply("ADDED", eps("a", "api-x", "api", [endpoint("10.0.0.1", "web-0", "u1")]))
    assert heard.slices == [
        ("a", "web", frozenset({"u1", "u2", "10.0.0.9"})),
        ("a", "web", frozenset({"u3"})),
        ("a", "api", frozenset({"u1"})),
    ]
    assert [ep.address for ep in s.endpoints_of("a", "web", "u1")] == ["10.0.0.1"]
    assert [ep.pod_name for ep in s.endpoints_at("a", "web", "10.0.0.9")] == [None]
    check(s)
    heard.slices.clear()

    # One endpoint turns terminating: only its owner is named.
    one[1] = endpoint("10.0.0.2", "web-1", "u2", terminating=True)
    slices._apply("MODIFIED", eps("a", "web-x", "web", one))
    assert heard.slices == [("a", "web", frozenset({"u2"}))]
    assert s.endpoints_of("a", "web", "u2")[0].terminating
    check(s)

    # An update that changes no endpoint names nobody.
    slices._apply("MODIFIED", eps("a", "web-x", "web", one, rv="6"))
    assert heard.slices == [("a", "web", frozenset({"u2"}))]

    # An endpoint moves from web-x to web-y: both updates name it; in between it is in both slices, in order.
    heard.slices.clear()
    slices._apply("MODIFIED", eps("a", "web-y", "web", [endpoint("10.0.0.3", "web-2", "u3"), one[0]]))
    assert [ep.address for ep in s.endpoints_of("a", "web", "u1")] == ["10.0.0.1", "10.0.0.1"]
    slices._apply("MODIFIED", eps("a", "web-x", "web", one[1:]))
    assert heard.slices == [("a", "web", frozenset({"u1"}))] * 2
    assert len(s.endpoints_of("a", "web", "u1")) == 1
    check(s)

    # A slice relabelled to another Service: both Services hear of all its endpoints.
    heard.slices.clear()
    slices._apply("MODIFIED", eps("a", "api-x", "web", [endpoint("10.0.0.1", "web-0", "u1")]))
    assert heard.slices == [("a", "api", frozenset({"u1"})), ("a", "web", frozenset({"u1"}))]
    assert s.endpoints("a", "api") == [] and s._endpoints.service("a", "api") is None
    check(s)

    # Deleted: every owner it held is named.
    heard.slices.clear()
    slices._apply("DELETED", eps("a", "web-x", "web", one[1:]))
    assert heard.slices == [("a", "web", frozenset({"u2", "10.0.0.9"}))]
    check(s)


async def test_a_random_walk_keeps_every_index_equal_to_the_records(store: tuple[ClusterStore, Heard]) -> None:
    s, _ = store
    rng = random.Random(18)
    pods, slices = s.pod_watches[0], s.slice_watches[0]
    for generation in range(1, 1501):
        ns = rng.choice("ab")
        name = f"p{rng.randrange(8)}"
        action = rng.random()
        if action < 0.45:
            uid = f"{name}-{rng.randrange(3)}"  # sometimes the same pod, sometimes one made again under its name
            ip = rng.choice([None, f"10.0.0.{rng.randrange(6)}"])
            pods._apply("MODIFIED", pod(ns, name, uid, ip, eci=rng.choice([None, f"eci-{rng.randrange(3)}"])))
        elif action < 0.55:
            known = pods.records.get(ns, {}).get(name)
            pods._apply("DELETED", pod(ns, name, known.uid if known and rng.random() < 0.8 else "stale", None))
        elif action < 0.9:
            members = [
                endpoint(
                    f"10.0.0.{rng.randrange(6)}",
                    *rng.choice([(None, None), (f"p{k}", f"p{k}-{rng.randrange(3)}"), (f"p{k}", None)]),
                    terminating=rng.random() < 0.3,
                )
                for k in rng.sample(range(8), rng.randrange(5))
            ]
            service = rng.choice(["web", "web", "api"])
            slices._apply("MODIFIED", eps(ns, f"s{rng.randrange(4)}", service, members, rv=str(generation)))
        elif action < 0.95:
            slices._apply("DELETED", eps(ns, f"s{rng.randrange(4)}", "web", [], uid=f"uid-s{rng.randrange(4)}"))
        else:
            items = [pod(ns, f"p{k}", f"p{k}-0", f"10.0.0.{k}") for k in rng.sample(range(8), 3)]

            async def relisted(items: list[dict[str, Any]] = items, version: int = generation, **q: Any) -> Resp:
                return Resp({"metadata": {"resourceVersion": str(version)}, "items": items})

            pods._source = Source(relisted)
            await pods._list()
        check(s)
