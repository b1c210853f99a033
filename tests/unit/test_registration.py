"""Membership both ways as plain decisions: which live members are added, with which weight; removals that turned out
wrong are undone; the readiness gate's verdicts; what status shows; which changes go out first."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import pytest

from alb_membership.alb.models import Server
from alb_membership.engine.batches import next_batch, token_for
from alb_membership.engine.readiness import verdict
from alb_membership.model.ledger import Entry, GroupLedger
from alb_membership.model.membership import endpoints_of
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import ResourceState
from alb_membership.model.status import restore, to_status
from tests.unit.fakes import RecordingKube, RecordingReconciler, View, pod, resource, selected

UID = "sgm-uid-1"
GATE = "target-health.albmembership.io/web"
A = Server("Ip", "10.0.0.1", 8080)


def status(rec: RecordingReconciler) -> dict[str, Any]:
    state = rec.resources[UID]
    return to_status(state, rec.ledger(state.group))


def registering(weight: int = 30, **extra: Any) -> dict[str, Any]:
    return selected(registration={"enabled": True, "weight": weight}, **extra)


async def test_a_ready_member_is_added_with_the_resources_weight(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2", ready=True)]
    rec.start(registering(), repair=False)
    assert rec.sent() == ["Ip:10.0.0.2:8080"], "only the Ready pod joins"
    pending = status(rec)["pending"]["Ip:10.0.0.2:8080"]
    assert (pending["action"], pending["weight"], pending["owners"], pending["trigger"]) == (
        "add",
        30,
        ["uid-b"],
        "registration",
    )
    view.put(pod("a", ready=True))
    rec.pod_changed(pod("a", ready=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.2:8080", "Ip:10.0.0.1:8080"], "a pod joins once it turns Ready"
    rec.pod_changed(pod("a", ready=True), deleted=False)
    assert len(rec.sent()) == 2, "an addition decided is not decided again"


async def test_remove_only_resources_add_nothing(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a", ready=True)]
    rec.start(selected(), repair=False)
    assert rec.sent() == []
    assert status(rec)["pending"] == {}


async def test_a_pod_declaring_the_gate_joins_once_its_containers_are_ready(
    rec: RecordingReconciler, view: View
) -> None:
    waiting = pod("a", containers_ready=False, gates={GATE: None})
    view.pod_list = [waiting]
    rec.start(registering(), repair=False)
    assert rec.sent() == []
    ready_containers = pod("a", containers_ready=True, gates={GATE: "False"})
    view.put(ready_containers)
    rec.pod_changed(ready_containers, deleted=False)
    assert rec.sent() == ["Ip:10.0.0.1:8080"], "the gate keeps it not Ready: its containers being ready is enough"
    other_gate = pod("b", ip="10.0.0.2", containers_ready=True, gates={"target-health.albmembership.io/api": None})
    view.put(other_gate)
    rec.pod_changed(other_gate, deleted=False)
    assert rec.sent() == ["Ip:10.0.0.1:8080"], "another resource's gate does not make it ready for this one"


async def test_an_addition_not_sent_is_called_off_when_its_pod_leaves(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a", ready=True)]
    rec.start(registering(), repair=False)
    ledger = rec.ledger(rec.resources[UID].group)
    ledger.seen_in_group(A, "Absent", None)
    rec.pod_changed(pod("a", ready=True, deleting=True), deleted=False)
    assert A not in ledger.entries, "never added and nobody wants it: nothing to take out"
    assert rec.sent() == ["Ip:10.0.0.1:8080"], "no removal"


async def test_a_deletion_that_never_came_after_the_gate_is_undone_with_the_weight_it_had(
    rec: RecordingReconciler, view: View, kube: RecordingKube
) -> None:
    """Remove-only: the gate took the pod's server out, another webhook refused the deletion, the pod is still
    live. Its server goes back, with the weight the group showed."""
    live = pod("a", ready=True)
    view.pod_list = [live]
    rec.start(selected(deletionGate={"enabled": True}), repair=False)
    ledger = rec.ledger(rec.resources[UID].group)
    ledger.seen_in_group(A, "Available", 7)
    assert [server for _, server in rec.gate(live)] == [A]
    rec.pod_changed(live, deleted=False)
    assert status(rec)["pending"][A.compact]["trigger"] == "deletion-gate", "a gated pod is leaving, live as it looks"
    ledger.entries[A].removal.client_token = "albm-x"  # type: ignore[union-attr]
    ledger.finished(A)
    rec.ungate(live)
    assert rec.sent()[-1] == A.compact
    addition = ledger.entries[A].addition
    assert addition is not None and (addition.trigger, addition.weight) == ("undo", 7)
    await asyncio.sleep(0)
    assert "RemovalUndone" in [reason for _, reason, _ in kube.events]
    undone = rec._effects._metrics.registry.get_sample_value
    assert undone("albm_removals_undone_total", {"reason": "owner-live-again"}) == 1.0


async def test_a_removal_not_sent_is_called_off_when_the_deletion_never_came(
    rec: RecordingReconciler, view: View
) -> None:
    live = pod("a", ready=True)
    view.pod_list = [live]
    rec.start(selected(deletionGate={"enabled": True}), repair=False)
    ledger = rec.ledger(rec.resources[UID].group)
    rec.gate(live)
    rec.ungate(live)
    entry = ledger.entries[A]
    assert (entry.removal, entry.addition, entry.live_owners()) == (None, None, [(UID, "uid-a")])


async def test_an_ip_reused_while_the_removal_was_out_goes_back_when_the_new_pod_is_ready(
    rec: RecordingReconciler, view: View
) -> None:
    view.pod_list = [pod("old")]
    rec.start(selected(), repair=False)
    ledger = rec.ledger(rec.resources[UID].group)
    view.drop("uid-old")
    rec.pod_changed(pod("old"), deleted=True)
    ledger.entries[A].removal.client_token = "albm-x"  # type: ignore[union-attr]
    new = pod("new", uid="uid-new")
    view.put(new)
    rec.pod_changed(new, deleted=False)
    entry = ledger.finished(A)
    assert entry is not None and entry.undo == "owner-live-after-removal"
    rec.in_group_changed(ledger, [A])
    assert ledger.entries[A].addition is None, "not Ready yet: nothing goes back"
    ready = pod("new", uid="uid-new", ready=True)
    view.put(ready)
    rec.pod_changed(ready, deleted=False)
    assert ledger.entries[A].addition is not None and ledger.entries[A].addition.trigger == "undo"


async def test_status_counts_servers_and_what_is_in_rotation(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a", ready=True), pod("b", ip="10.0.0.2", ready=True)]
    view.slices[("shop", "web")] = []
    rec.start(selected(serviceRef={"name": "web"}), repair=False)
    view.slices[("shop", "web")] = endpoints_of(
        {
            "endpoints": [
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a", "uid": "uid-a"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "name": "b", "uid": "uid-b"}},
            ]
        }
    )
    rec.endpoints_changed("shop", "web")
    ledger = rec.ledger(rec.resources[UID].group)
    ledger.seen_in_group(A, "Available", 100)
    shown = status(rec)
    assert len(shown["members"]) == 4, "two pods, each a pod and an endpoint owner"
    assert (shown["memberCount"], shown["inRotationCount"]) == (2, 1)
    assert shown["members"]["uid-a"]["inGroup"] == "Available"


def test_pending_additions_and_what_the_group_showed_survive_a_restart() -> None:
    ledger = GroupLedger(("cn-hangzhou", "sgp-1"))
    ledger.hold((UID, "uid-a"), A, "pod", "a")
    ledger.seen_in_group(A, "Absent", None)
    assert ledger.want(A, 30, "registration")
    ledger.entries[A].addition.client_token = "albm-add"  # type: ignore[union-attr]
    other = Server("Ip", "10.0.0.2", 8080)
    ledger.hold((UID, "uid-b"), other, "pod", "b")
    ledger.seen_in_group(other, "Available", 100)
    body = resource()
    state = ResourceState(Ref("shop", "web", UID), Spec.parse(body["spec"]), ledger.key)
    written = to_status(state, ledger)
    again = GroupLedger(ledger.key)
    assert restore(again, UID, written) == [A]
    addition = again.entries[A].addition
    assert addition is not None and (addition.weight, addition.client_token) == (30, "albm-add")
    assert again.entries[A].live_owners() == [(UID, "uid-a")], "an addition's owner is live"
    assert again.entries[other].in_group == "Available"
    assert token_for([again.entries[A]]) == token_for([ledger.entries[A]])


def test_an_additions_token_never_equals_a_removals_of_the_same_owner() -> None:
    ledger = GroupLedger(("cn-hangzhou", "sgp-1"))
    ledger.hold((UID, "uid-a"), A, "pod", "a")
    ledger.want(A, 100, "registration")
    adding = token_for([ledger.entries[A]])
    ledger.entries[A].addition = None
    ledger.leave((UID, "uid-a"), "pod-terminating")
    assert token_for([ledger.entries[A]]) != adding


def test_removals_go_first_and_additions_are_never_starved() -> None:
    ledger = GroupLedger(("cn-hangzhou", "sgp-1"))
    servers = [Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 5)]
    for i, server in enumerate(servers):
        ledger.hold((UID, f"p{i}"), server, "pod", f"p{i}")
    ledger.want(servers[0], 100, "registration")
    ledger.want(servers[1], 100, "registration")
    ledger.leave((UID, "p2"), "pod-terminating")
    ledger.leave((UID, "p3"), "pod-terminating")
    queue: OrderedDict[Server, None] = OrderedDict((s, None) for s in servers)
    batch = next_batch(queue, ledger, 1, lambda _e: False)
    assert [e.server for e in batch] == [servers[2]], "a removal first, though queued after the additions"
    batch = next_batch(queue, ledger, 1, lambda _e: False, additions_first=True)
    assert [e.server for e in batch] == [servers[0]], "an addition after a removal call"
    batch = next_batch(queue, ledger, 5, lambda _e: False, busy={servers[3]})
    assert [e.server for e in batch] == [servers[1]], "a server under way waits for its call or job to end"


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ({}, ("False", "ServerNotRegistered")),
        ({"in_group": "Available"}, ("True", "ServerAvailable")),
        ({"in_group": "Adding"}, ("False", "ServerAdding")),
        ({"adding": True}, ("False", "ServerAdding")),
        ({"adding": True, "failed": "QuotaExceeded.ServersNum"}, ("False", "RegistrationFailed")),
    ],
)
def test_the_readiness_gate_says_why_a_pod_waits(shape: dict[str, Any], expected: tuple[str, str]) -> None:
    ledger = GroupLedger(("cn-hangzhou", "sgp-1"))
    ledger.hold((UID, "uid-a"), A, "pod", "a")
    entry: Entry = ledger.entries[A]
    entry.in_group = shape.get("in_group")
    if shape.get("adding"):
        ledger.want(A, 100, "registration")
        if shape.get("failed"):
            assert entry.addition is not None
            entry.addition.refused, entry.addition.error = 1, shape["failed"]
    got = verdict([entry], "sgp-1")
    assert (got.status, got.reason) == expected
    if shape.get("failed"):
        assert got.message.startswith("RegistrationFailed: QuotaExceeded.ServersNum")
    assert verdict([], "sgp-1").reason == "ServerNotRegistered", "a pod without a known server waits too"


async def test_a_member_that_cannot_be_added_is_degraded_until_it_can(rec: RecordingReconciler, view: View) -> None:
    eci = {"serverType": "Eci", "port": 8080}
    view.pod_list = [pod("a", ready=True)]
    rec.start(selected(backend=eci, registration={"enabled": True}), repair=False)
    degraded = rec.resources[UID].conditions["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "UnmappableMember")
    assert "a: backend Eci needs the pod annotation" in degraded.message
    mapped = pod("a", ready=True, annotations={"k8s.aliyun.com/eci-instance-id": "eci-1"})
    view.put(mapped)
    rec.pod_changed(mapped, deleted=False)
    degraded = rec.resources[UID].conditions["Degraded"]
    assert (degraded.status, degraded.reason) == ("False", "AsExpected")
    assert rec.sent() == ["Eci:eci-1:8080"]


async def test_remove_only_resources_are_not_degraded_by_unmappable_pods(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a", ready=True)]
    rec.start(selected(backend={"serverType": "Eci", "port": 8080}), repair=False)
    assert rec.resources[UID].conditions["Degraded"].status == "False"
