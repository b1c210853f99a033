"""PodDisruptionBudgets as the Eviction API judges an eviction by them (k8s registry/core/pod/storage/eviction.go),
after admission: pure functions over the budgets' bodies, as listed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from alb_membership.model.membership import PodView
from alb_membership.model.spec import Selector

ALWAYS_ALLOW = "AlwaysAllow"  # spec.unhealthyPodEvictionPolicy: a pod not Ready is evicted whatever the budget
Judgement = Literal["unchecked", "refused", "checked"]
UNCHECKED: Judgement = "unchecked"
REFUSED: Judgement = "refused"
CHECKED: Judgement = "checked"


@dataclass(frozen=True)
class Budget:
    uid: str
    selector: Selector | None  # policy/v1: a null selector picks no pod, an empty one every pod
    allowed: int  # status.disruptionsAllowed; 0 while the status is older than the spec (the API refuses: 429)
    disrupted: frozenset[str]  # status.disruptedPods: the pods (by name) whose eviction the API took off it
    admits_unready: bool  # a pod that is not Ready is evicted without taking a disruption off this budget

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Budget:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        selector = spec.get("selector")
        stale = int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0)
        desired = int(status.get("desiredHealthy") or 0)
        return cls(
            uid=str(meta.get("uid", "")),
            selector=Selector.from_spec(selector) if selector is not None else None,
            allowed=0 if stale else int(status.get("disruptionsAllowed") or 0),
            disrupted=frozenset(status.get("disruptedPods") or {}),
            admits_unready=spec.get("unhealthyPodEvictionPolicy") == ALWAYS_ALLOW
            or int(status.get("currentHealthy") or 0) >= desired > 0,
        )

    def picks(self, pod: PodView) -> bool:
        return self.selector is not None and self.selector.matches(pod.labels)


def budgets_of(budgets: Iterable[Budget], pod: PodView) -> list[Budget]:
    """The budgets that pick the pod (those of its namespace: ``budgets`` is one namespace's list)."""
    return [b for b in budgets if b.picks(pod)]


def judgement(pod: PodView, budgets: list[Budget]) -> Judgement:
    """How the Eviction API will judge the pod's eviction by ``budgets`` (those that pick it): UNCHECKED, deleted
    without taking a disruption off any budget (a pod Pending, Succeeded, Failed or terminating; one no budget
    picks; one not Ready that its budget lets go unhealthy); REFUSED (500), a pod more than one budget picks;
    CHECKED, it needs a disruption of its one budget."""
    if pod.pending or pod.going_away or not budgets:
        return UNCHECKED
    if len(budgets) > 1:
        return REFUSED
    return UNCHECKED if not pod.ready and budgets[0].admits_unready else CHECKED
