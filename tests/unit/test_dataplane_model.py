"""The data plane's rules without a network: who is in rotation, where a server's requests go, smooth weighted round
robin, the traffic view, and the state's hook that ends a drain at once for a server with nothing in flight."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from alb_emulator import dataplane
from alb_emulator.dataplane import Event, Listener, Traffic, address, in_rotation
from alb_emulator.state import Behaviour, Group, Member, State, member_id

LOOPBACK = ["127.0.0.0/8", "::1/128"]


def listener() -> Listener:
    return Listener(group_id="sgp-x", port=0, runner=None, session=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "weight", "removing_gets_requests", "expected"),
    [
        ("Available", 100, True, True),
        ("Available", 0, True, False),
        ("Configuring", 10, True, True),
        ("Removing", 100, True, True),
        ("Removing", 100, False, False),
        ("Adding", 100, True, False),
        ("Draining", 100, True, False),
    ],
)
def test_in_rotation(status: str, weight: int, removing_gets_requests: bool, expected: bool) -> None:
    member = Member("10.0.0.1", "Ip", 80, weight=weight, status=status)
    assert in_rotation(member, Behaviour(removing_gets_requests=removing_gets_requests)) is expected


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (Member("127.0.0.1", "Ip", 8080), "127.0.0.1"),
        (Member("eni-1", "Eni", 8080, server_ip="127.0.0.3"), "127.0.0.3"),
        (Member("eni-1", "Eni", 8080), None),  # an Eni with no ServerIp has no address
        (Member("i-1", "Ecs", 8080, server_ip="127.0.0.4"), "127.0.0.4"),
        (Member("i-1", "Ecs", 8080), None),
        (Member("10.0.0.1", "Ip", 8080), None),  # outside proxy_networks
        (Member("::1", "Ip", 8080), "::1"),
        (Member("127.0.0.1", "Ip", None), None),  # no port
        (Member("not-an-ip", "Ip", 8080), None),
    ],
)
def test_address(member: Member, expected: str | None) -> None:
    assert address(member, LOOPBACK) == expected


def test_address_within_a_network_the_behaviour_allows() -> None:
    assert address(Member("10.88.0.7", "Ip", 80), [*LOOPBACK, "10.88.0.0/16"]) == "10.88.0.7"


def test_smooth_weighted_round_robin_interleaves_and_follows_the_rotation() -> None:
    a, b, c = (Member(f"10.0.0.{i}", "Ip", 80, weight=w) for i, w in ((1, 5), (2, 1), (3, 1)))
    lst = listener()
    picks = [lst.pick([a, b, c]).server_id for _ in range(7)]
    # nginx's example: a a b a c a a, never b and c in a row, a at most twice in a row.
    assert picks == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.1", "10.0.0.1"]
    counts = Counter(lst.pick([a, c]).server_id for _ in range(60))  # b left the rotation
    assert counts == {"10.0.0.1": 50, "10.0.0.3": 10}
    assert set(lst.current) == {member_id(a), member_id(c)}


def event(at: float, kind: str = "ok", port: int | None = 80) -> Event:
    mid = None if port is None else f"Ip|10.0.0.1|{port}|"
    return Event(at=at, ended=at + 0.01, kind=kind, status=200, server_id="10.0.0.1", member=mid)


def test_traffic_view_counts_the_window_per_group_and_server() -> None:
    t = Traffic()
    for e in (event(1.0), event(2.0, "refused"), event(3.0, "no_server", None), event(4.0, "cut", 81), event(5.0)):
        t.add(e)
    view: dict[str, Any] = t.view(2.0, 5.0, "failures", {"Ip|10.0.0.1|81|": 1})
    assert view["totals"]["requests"] == 3 and view["totals"]["ok"] == 0
    assert {k: v for k, v in view["totals"]["failures"].items() if v} == {"refused": 1, "no_server": 1, "cut": 1}
    assert [(s["member"], s["requests"], s["in_flight"]) for s in view["servers"]] == [
        ("Ip|10.0.0.1|80|", 1, 0),
        ("Ip|10.0.0.1|81|", 1, 1),
    ]
    assert [e["kind"] for e in view["events"]] == ["refused", "no_server", "cut"]
    assert "events" not in t.view(0, None, "none", {})
    assert len(t.view(0, None, "all", {})["events"]) == 5


def test_traffic_drops_the_oldest_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataplane, "EVENTS_PER_GROUP", 3)
    t = Traffic()
    for i in range(5):
        t.add(event(float(i)))
    view = t.view(0, None, "none", {})
    assert view["dropped"] == 2 and view["oldest_at"] == 2.0 and view["totals"]["requests"] == 3


def draining_state(idle: float | None, ends_when_idle: bool = True) -> tuple[State, Group]:
    state = State(Behaviour(job_seconds=1.0, drain_ends_when_idle=ends_when_idle), seed=1)
    group = Group(id="sgp-x", drain_enabled=True, drain_timeout_seconds=30)
    member = Member("10.0.0.1", "Ip", 80)
    group.members[member_id(member)] = member
    state.groups[group.id] = group
    state.idle_since = lambda gid, mid: idle
    state.start_job("RemoveServersFromServerGroup", group, 100.0, [member_id(member)], [])
    return state, group


def test_a_server_with_nothing_in_flight_leaves_at_once_when_its_removal_takes_effect() -> None:
    state, group = draining_state(idle=0.0)
    state.advance(101.5)
    assert group.members == {}
    assert group.history[0]["ended"] == "idle" and group.history[0]["gone_at"] == 101.0


def test_a_server_idle_only_since_later_leaves_then() -> None:
    state, group = draining_state(idle=101.2)
    state.advance(101.5)
    assert group.history[0]["gone_at"] == 101.2


@pytest.mark.parametrize(("idle", "ends_when_idle"), [(None, True), (0.0, False)])
def test_otherwise_it_drains_for_the_timeout(idle: float | None, ends_when_idle: bool) -> None:
    state, group = draining_state(idle=idle, ends_when_idle=ends_when_idle)
    state.advance(101.5)
    assert [m.status for m in group.members.values()] == ["Draining"]
    state.advance(131.0)
    assert group.members == {} and group.history[0]["ended"] == "drain_timeout"


@pytest.mark.parametrize(
    "bad",
    [
        {"removing_gets_requests": 1},
        {"drain_ends_when_idle": "true"},
        {"undrained_in_flight": "drop"},
        {"proxy_connect_timeout_seconds": -1},
        {"proxy_request_timeout_seconds": True},
        {"proxy_networks": "127.0.0.0/8"},
        {"proxy_networks": ["127.0.0.1/8"]},  # host bits set
    ],
)
def test_behaviour_refuses_bad_data_plane_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Behaviour.from_config(bad)
