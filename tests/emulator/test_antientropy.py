"""Anti-entropy: what the watches missed is found by listing the cluster; removals whose servers left the group
some other way are forgotten; servers the operator never owned are never looked at."""

from __future__ import annotations

import asyncio
from typing import cast

import aiohttp
import pytest

from alb_membership.alb.client import AlbClient
from alb_membership.cluster.kube import Kube
from alb_membership.engine.antientropy import AntiEntropy
from alb_membership.metrics import Metrics
from alb_membership.model.membership import EndpointView, PodView
from tests.support.alb import alb_client
from tests.support.emulator import EmulatorProcess, server
from tests.unit.fakes import RecordingKube, RecordingReconciler, View, pod, resource, selected


class ListingKube(RecordingKube):
    """What the API server answers to a list: here, the truth the watches missed."""

    def __init__(self, pods: list[PodView]) -> None:
        super().__init__()
        self.pods = pods

    async def list_pods(self, namespace: str, eni_annotation: str) -> list[PodView]:
        return [p for p in self.pods if p.namespace == namespace]

    async def list_endpoints(self, namespace: str, service: str) -> list[EndpointView]:
        return []


@pytest.fixture
def client(session: aiohttp.ClientSession, emulator: EmulatorProcess) -> AlbClient:
    return alb_client(session, emulator)


async def test_a_deletion_the_watch_missed_is_repaired(client: AlbClient) -> None:
    view = View()
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    metrics = Metrics()
    kube = ListingKube([pod("b", ip="10.0.0.2")])  # pod a was deleted in a watch gap: the index still has it
    rec = RecordingReconciler(view, kube)
    rec.start(selected(), repair=False)
    await AntiEntropy(rec, cast(Kube, kube), lambda _r: client, metrics, 60).check_cluster()
    assert rec.sent() == ["Ip:10.0.0.1:8080"]
    await asyncio.sleep(0)  # Events go out in the background
    assert "LeakRepaired" in [reason for _, reason, _ in kube.events]


async def test_pending_removals_already_out_of_the_group_are_forgotten(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    group = "sgp-test00000001"
    emulator.add_group(group, [server("10.0.0.2"), server("192.0.2.250")])  # a, 10.0.0.1, left some other way
    view = View()
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    kube = ListingKube(view.pod_list)
    rec = RecordingReconciler(view, kube)
    state = rec.start(selected(), repair=False)
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    rec.pod_changed(pod("b", ip="10.0.0.2", deleting=True), deleted=False)
    metrics = Metrics()
    await AntiEntropy(rec, cast(Kube, kube), lambda _r: client, metrics, 60).check_groups()
    ledger = rec.ledger(state.group)
    assert [e.server.compact for e in ledger.pending()] == ["Ip:10.0.0.2:8080"], "b is still in the group"
    assert metrics.forgotten._value.get() == 1
    assert state.removed_count == 0, "found out already, not removed by this operator"
    assert {s["ServerId"] for s in emulator.group(group)["Servers"]} == {"10.0.0.2", "192.0.2.250"}
    assert emulator.requests("RemoveServersFromServerGroup") == [], "anti-entropy only reads"


class RacingKube(ListingKube):
    """A list answered while the watches go on: pod ``late`` appears during it, and the list, read before, lacks
    it; pod ``gone`` was deleted and removed, and the list, read before, still has it."""

    def __init__(self, listed: list[PodView], rec: RecordingReconciler, view: View, late: PodView) -> None:
        super().__init__(listed)
        self.rec, self.view, self.late = rec, view, late

    async def list_pods(self, namespace: str, eni_annotation: str) -> list[PodView]:
        listed = await super().list_pods(namespace, eni_annotation)
        self.view.put(self.late)
        self.rec.pod_changed(self.late, deleted=False)
        return listed


async def test_a_list_older_than_the_watches_neither_brings_back_nor_removes(client: AlbClient) -> None:
    view = View()
    gone, late = pod("gone", ip="10.0.0.9"), pod("late", ip="10.0.0.7")
    view.pod_list = [pod("a"), gone]
    kube = ListingKube([])
    rec = RecordingReconciler(view, kube)
    state = rec.start(selected(), repair=False)
    rec.pod_changed(gone, deleted=True)  # the watch saw it go; its removal is decided
    ledger = rec.ledger(state.group)
    ledger.finished(ledger.pending()[0].server)
    view.drop(gone.uid)
    racing = RacingKube([pod("a"), gone], rec, view, late)
    await AntiEntropy(rec, cast(Kube, racing), lambda _r: client, Metrics(), 60).check_cluster()
    assert rec.sent() == ["Ip:10.0.0.9:8080"], "nothing more: the late pod stays, the gone one is not re-recorded"
    assert set(ledger.owner_ids(state.ref.uid)) == {"uid-a", "uid-late"}


async def test_a_group_that_cannot_be_listed_does_not_keep_the_next_ones_unchecked(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """The round goes on group by group: one group's failing listing is told and counted, and the next group's
    removals already out are still forgotten."""
    emulator.add_group("sgp-first000000001", [server("10.0.9.9")])
    emulator.add_group("sgp-test00000001", [server("192.0.2.250")])  # 10.0.0.1 left some other way
    refused = {"kind": "error", "code": "Forbidden.NoPermission", "status": 403}
    emulator.admin("PUT", "faults", {"script": [refused], "actions": ["ListServerGroupServers"]})
    view = View()
    view.pod_list = [pod("a"), pod("x", ip="10.0.9.9", labels={"app": "other"})]
    kube = ListingKube(view.pod_list)
    rec = RecordingReconciler(view, kube)
    other = resource(
        uid="sgm-uid-first",
        name="other",
        serverGroupId="sgp-first000000001",
        podSelector={"matchLabels": {"app": "other"}},
        backend={"serverType": "Ip", "port": 8080},
    )
    first = rec.start(other, repair=False)  # its group comes first in the round
    state = rec.start(selected(), repair=False)
    rec.pod_changed(pod("x", ip="10.0.9.9", labels={"app": "other"}, deleting=True), deleted=False)
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    metrics = Metrics()
    await AntiEntropy(rec, cast(Kube, kube), lambda _r: client, metrics, 60).check_groups()
    assert [e.server.compact for e in rec.ledger(first.group).pending()] == ["Ip:10.0.9.9:8080"]
    assert rec.ledger(state.group).pending() == [], "the next group was checked all the same"
    assert metrics.internal_errors.labels("anti-entropy")._value.get() == 1
