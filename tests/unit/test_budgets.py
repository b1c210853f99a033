"""PodDisruptionBudgets as the Eviction API judges an eviction by them (k8s registry/core/pod/storage/eviction.go):
which budgets pick a pod, the room a budget's status gives, and the evictions it deletes unchecked or refuses."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from alb_membership.cluster.kube import Kube
from alb_membership.model.budgets import CHECKED, REFUSED, UNCHECKED, Budget, budgets_of, judgement
from tests.unit.fakes import pod


def pdb(uid: str, selector: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector}
    if "policy" in status:
        spec["unhealthyPodEvictionPolicy"] = status.pop("policy")
    meta = {"uid": uid, "generation": status.pop("generation", 1)}
    return {"metadata": meta, "spec": spec, "status": {"observedGeneration": 1, **status}}


async def test_the_budgets_of_a_pod_are_those_whose_selector_picks_it() -> None:
    items = [
        pdb("web", {"matchLabels": {"app": "web"}}, disruptionsAllowed=2),
        pdb("everything", {}, disruptionsAllowed=1),  # policy/v1: an empty selector picks every pod
        pdb("nothing", None, disruptionsAllowed=0),  # and a null one none
        pdb("api", {"matchLabels": {"app": "api"}}, disruptionsAllowed=0),
        pdb("new", {"matchExpressions": [{"key": "app", "operator": "Exists"}]}),  # no status yet: none
    ]

    class Response:
        async def read(self) -> bytes:
            return json.dumps({"items": items}).encode()

    class Policy:
        async def list_namespaced_pod_disruption_budget(self, _ns: str, **_kw: Any) -> Response:
            return Response()

    kube = object.__new__(Kube)
    kube._policy = cast(Any, Policy())
    picked = budgets_of(await kube.budgets("shop"), pod("a"))
    assert [(b.uid, b.allowed) for b in picked] == [("web", 2), ("everything", 1), ("new", 0)]


def test_a_budget_whose_status_is_older_than_its_spec_allows_none() -> None:
    """The Eviction API refuses (429) while status.observedGeneration < metadata.generation."""
    assert Budget.from_body(pdb("web", {}, disruptionsAllowed=3)).allowed == 3
    assert Budget.from_body(pdb("web", {}, disruptionsAllowed=3, generation=2)).allowed == 0


def test_disrupted_pods_are_named() -> None:
    body = pdb("web", {}, disruptionsAllowed=0, disruptedPods={"web-1": "2026-12-01T10:00:00Z"})
    assert Budget.from_body(body).disrupted == frozenset({"web-1"})


@pytest.mark.parametrize(
    ("status", "admits"),
    [
        ({"policy": "AlwaysAllow"}, True),
        ({"policy": "IfHealthyBudget", "currentHealthy": 3, "desiredHealthy": 3}, True),
        ({"currentHealthy": 3, "desiredHealthy": 3}, True),  # the default is IfHealthyBudget
        ({"currentHealthy": 2, "desiredHealthy": 3}, False),
        ({"currentHealthy": 0, "desiredHealthy": 0}, False),  # desiredHealthy must be > 0
    ],
)
def test_which_budgets_let_a_pod_that_is_not_ready_go_unchecked(status: dict[str, Any], admits: bool) -> None:
    assert Budget.from_body(pdb("web", {}, **status)).admits_unready is admits


def test_how_the_eviction_api_judges_a_pod() -> None:
    one = [Budget.from_body(pdb("web", {}, disruptionsAllowed=1))]
    lenient = [Budget.from_body(pdb("web", {}, disruptionsAllowed=0, policy="AlwaysAllow"))]
    two = [*one, Budget.from_body(pdb("all", {}, disruptionsAllowed=1))]
    assert judgement(pod("a", ready=True), one) == CHECKED
    assert judgement(pod("a", ready=False), one) == CHECKED
    assert judgement(pod("a", ready=False), lenient) == UNCHECKED
    assert judgement(pod("a", ready=True), lenient) == CHECKED
    assert judgement(pod("a", ready=True), []) == UNCHECKED
    assert judgement(pod("a", ready=True), two) == REFUSED
    for gone in (
        pod("a", phase="Pending"),
        pod("a", phase="Succeeded"),
        pod("a", phase="Failed"),
        pod("a", deleting=True),
    ):
        assert judgement(gone, two) == UNCHECKED, "deleted without any budget check"
