"""The operator's decisions as plain code: selectors, server mapping, status round trips, tokens, triggers."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest

from alb_membership.alb.models import Server
from alb_membership.membership import ECI_ANNOTATION, PodView, UnmappablePod, endpoints_of, server_for
from alb_membership.pipeline import GroupPipeline, token_for
from alb_membership.reconciler import Reconciler
from alb_membership.spec import Backend, Selector
from alb_membership.state import ACTIVE, REMOVED, REMOVING, MembershipState, Pending, now
from alb_membership.status_writer import StatusWriter

ENI = "k8s.aliyun.com/eni-id"


def resource(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": "web", "uid": "sgm-uid-1", "generation": 1},
        "spec": {"serverGroupId": "sgp-test00000001", **spec},
    }


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    labels: dict[str, str] | None = None,
    deleting: bool = False,
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
) -> PodView:
    meta: dict[str, Any] = {
        "namespace": "shop",
        "name": name,
        "uid": f"uid-{name}",
        "labels": labels if labels is not None else {"app": "web"},
        "annotations": annotations or {},
    }
    if deleting:
        meta.update(deletionTimestamp="2026-11-28T10:00:30Z", deletionGracePeriodSeconds=30)
    return PodView.from_body({"metadata": meta, "status": {"podIP": ip, "phase": phase}}, ENI)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "api"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}, {"tier": "b"}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {"tier": "a"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"app": "web"}, True),
        ({}, {"anything": "x"}, True),
    ],
)
def test_selectors(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert Selector.from_spec(selector).matches(labels) is matches


def test_server_mapping_by_backend_type() -> None:
    assert server_for(Backend("Ip", 8080), "10.0.0.1", {}, ENI) == Server("Ip", "10.0.0.1", 8080)
    assert server_for(Backend("Eci", 80), "10.0.0.1", {ECI_ANNOTATION: "eci-1"}, ENI) == Server("Eci", "eci-1", 80)
    assert server_for(Backend("Eni", 80), "10.0.0.1", {ENI: "eni-1"}, ENI) == Server("Eni", "eni-1", 80, "10.0.0.1")
    assert server_for(Backend("Ip", 8080), None, {}, ENI) is None, "a pod without an IP yet is ignored"
    with pytest.raises(UnmappablePod, match=ECI_ANNOTATION):
        server_for(Backend("Eci", 80), "10.0.0.1", {}, ENI)
    with pytest.raises(UnmappablePod, match=ENI):
        server_for(Backend("Eni", 80), "10.0.0.1", {}, ENI)


def test_deletion_began_grace_seconds_before_the_deletion_timestamp() -> None:
    view = pod("a", deleting=True)
    assert view.deletion_started == dt.datetime(2026, 11, 28, 10, 0, 0, tzinfo=dt.UTC)
    assert view.going_away
    assert pod("b", phase="Failed").going_away and not pod("c").going_away


def test_endpoints_of_a_slice() -> None:
    views = endpoints_of(
        {
            "endpoints": [
                {
                    "addresses": ["10.0.0.1"],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "a", "uid": "u-a"},
                },
                {"addresses": ["10.0.0.2"], "conditions": {"terminating": True}},
            ]
        }
    )
    assert [(v.address, v.terminating, v.pod_uid) for v in views] == [
        ("10.0.0.1", False, "u-a"),
        ("10.0.0.2", True, None),
    ]


def test_status_round_trip() -> None:
    state = MembershipState.from_resource(resource(servers=[{"serverId": "i-1", "serverType": "Ecs", "port": 80}]))
    state.decide(
        Pending("uid-a", Server("Ip", "10.0.0.1", 8080), "pod-terminating", now(), client_token="tok", attempt=2)
    )
    state.set_condition("Ready", "True", "Reconciled", "fine")
    back = MembershipState.from_resource({**resource(), "status": state.to_status()})
    assert back.pending["uid-a"].client_token == "tok" and back.pending["uid-a"].attempt == 2
    assert back.members["uid-a"].phase == REMOVING
    assert back.conditions["Ready"].reason == "Reconciled"


def test_tokens_come_from_uids_and_attempts() -> None:
    state = MembershipState.from_resource(resource())
    a = Pending("uid-a", Server("Ip", "10.0.0.1", 8080), "pod-terminating", now())
    b = Pending("uid-b", Server("Ip", "10.0.0.2", 8080), "pod-terminating", now())
    assert token_for(state, [a, b]) == token_for(state, [b, a])
    reused_ip = Pending("uid-new-pod", Server("Ip", "10.0.0.1", 8080), "pod-terminating", now())
    assert token_for(state, [a]) != token_for(state, [reused_ip]), "a new pod on an old IP gets a new token"
    retried = Pending("uid-a", a.server, a.trigger, now(), attempt=1)
    assert token_for(state, [a]) != token_for(state, [retried]), "a new attempt after a failed job gets a new token"


class FakeWriter:
    def soon(self, state: MembershipState) -> None:
        pass

    def forget(self, state: MembershipState) -> None:
        pass


class FakePipeline:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def enqueue(self, state: MembershipState, ids: list[str]) -> None:
        self.sent += ids


@pytest.fixture
def pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def reconciler(pipeline: FakePipeline) -> Reconciler:
    warnings: list[str] = []
    return Reconciler(
        cast(StatusWriter, FakeWriter()),
        lambda _s: cast(GroupPipeline, pipeline),
        lambda _s, reason, _m: warnings.append(reason),
        ENI,
    )


def selected(**extra: Any) -> dict[str, Any]:
    return resource(podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}, **extra)


def test_pod_lifecycle_decisions(reconciler: Reconciler, pipeline: FakePipeline) -> None:
    state = reconciler.start(selected(), [pod("a"), pod("b", ip=None), pod("other", labels={"app": "api"})], None)
    assert set(state.members) == {"uid-a"}, "pods without an IP and unselected pods are no members"
    reconciler.pod_changed(state, pod("a", deleting=True), deleted=False)
    assert pipeline.sent == ["uid-a"] and state.pending["uid-a"].trigger == "pod-terminating"
    reconciler.pod_changed(state, pod("a", deleting=True), deleted=True)
    assert pipeline.sent == ["uid-a"], "the same pod is not removed twice"
    state.removed(["uid-a"])
    reconciler.pod_changed(state, pod("a", deleting=True), deleted=True)
    assert "uid-a" not in state.members, "the record goes once the removal is done and the pod is gone"


def test_relabelled_pod_leaves(reconciler: Reconciler, pipeline: FakePipeline) -> None:
    state = reconciler.start(selected(), [pod("a")], None)
    reconciler.pod_changed(state, pod("a", labels={"app": "web", "debug": "x"}), deleted=False)
    assert pipeline.sent == []
    reconciler.pod_changed(state, pod("a", labels={"app": "debugging"}), deleted=False)
    assert state.pending["uid-a"].trigger == "pod-unselected"


def test_start_removes_members_whose_pods_vanished(reconciler: Reconciler, pipeline: FakePipeline) -> None:
    body = selected()
    recorded = MembershipState.from_resource(body)
    reconciler.start(body, [pod("a"), pod("b", ip="10.0.0.2")], None)
    body["status"] = reconciler.states["sgm-uid-1"].to_status()
    reconciler.forget("sgm-uid-1")
    assert recorded.members == {}
    state = reconciler.start(body, [pod("b", ip="10.0.0.2")], None)  # a new operator; pod a is gone
    assert state.pending["uid-a"].trigger == "pod-gone"
    assert state.members["uid-b"].phase == ACTIVE


def test_pending_removals_go_out_again_on_start(reconciler: Reconciler, pipeline: FakePipeline) -> None:
    body = selected()
    first = reconciler.start(body, [pod("a")], None)
    first.decide(Pending("uid-a", Server("Ip", "10.0.0.1", 8080), "pod-terminating", now(), client_token="tok-1"))
    body["status"] = first.to_status()
    reconciler.forget("sgm-uid-1")
    pipeline.sent.clear()
    state = reconciler.start(body, [pod("a", deleting=True)], None)
    assert pipeline.sent == ["uid-a"] and state.pending["uid-a"].client_token == "tok-1"


def test_dropped_static_server_and_deletion(reconciler: Reconciler) -> None:
    servers = [
        {"serverId": "i-1", "serverType": "Ecs", "port": 80},
        {"serverId": "i-2", "serverType": "Ecs", "port": 80},
    ]
    body = resource(servers=servers)
    state = reconciler.start(body, [], None)
    assert len(state.active_members()) == 2
    reconciler.spec_changed(resource(servers=servers[:1]), [], None)
    assert [p.trigger for p in state.pending.values()] == ["spec-change"]
    assert not reconciler.deleting(resource(servers=servers[:1]))
    assert {p.trigger for p in state.pending.values()} == {"spec-change", "resource-deleted"}
    state.removed(list(state.pending))
    assert reconciler.deleting(resource(servers=servers[:1]))
    assert all(m.phase == REMOVED for m in state.members.values())


def test_endpoints_terminating_and_gone(reconciler: Reconciler) -> None:
    body = resource(serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080})
    eps = endpoints_of(
        {
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {}, "targetRef": {"kind": "Pod", "name": "a", "uid": "u-a"}},
                {"addresses": ["10.0.0.2"], "conditions": {}, "targetRef": {"kind": "Pod", "name": "b", "uid": "u-b"}},
            ]
        }
    )
    state = reconciler.start(body, [], eps)
    assert set(state.members) == {"u-a", "u-b"}
    reconciler.endpoints_changed(
        state,
        endpoints_of(
            {
                "endpoints": [
                    {
                        "addresses": ["10.0.0.1"],
                        "conditions": {"terminating": True},
                        "targetRef": {"kind": "Pod", "name": "a", "uid": "u-a"},
                    }
                ]
            }
        ),
        {},
    )
    assert {k: p.trigger for k, p in state.pending.items()} == {"u-a": "endpoint-terminating", "u-b": "endpoint-gone"}


def test_unmappable_pod_warns_once(pipeline: FakePipeline) -> None:
    warnings: list[str] = []
    reconciler = Reconciler(
        cast(StatusWriter, FakeWriter()),
        lambda _s: cast(GroupPipeline, pipeline),
        lambda _s, reason, _m: warnings.append(reason),
        ENI,
    )
    body = resource(podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Eci", "port": 80})
    state = reconciler.start(body, [pod("a")], None)
    reconciler.pod_changed(state, pod("a"), deleted=False)
    assert warnings == ["UnmappablePod"] and state.members == {}
    reconciler.pod_changed(state, pod("b", annotations={ECI_ANNOTATION: "eci-b"}), deleted=False)
    assert state.members["uid-b"].server == Server("Eci", "eci-b", 80)
