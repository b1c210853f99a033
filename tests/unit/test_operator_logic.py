"""Pure mapping from Kubernetes objects to ALB servers: selectors, backend types, deletion times, slices."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from alb_membership.alb.models import Server
from alb_membership.model.membership import ECI_ANNOTATION, UnmappablePod, endpoints_of, server_for
from alb_membership.model.spec import Backend, Selector
from tests.unit.fakes import ENI, pod


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
