"""The emulator's data plane (alb_emulator.dataplane): a proxy per server group on 127.0.0.1 in front of small
backends on 127.0.0.1 started by the test (tests/support/backends.py). Requests spread by weight; a removed server gets
no new request once its job took effect (or from the call on, with removing_gets_requests false); a draining
server's long request finishes when the drain allows and is cut, counted, when the drain timeout is shorter; an
Adding server gets nothing until Available; 503 with no server in rotation; refused, reset, timeout and backend 5xx
counted per server. Where it can, a test checks the backends' own record, not only the proxy's counts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alibabacloud_alb20200616 import models as alb

from alb_emulator.loadgen import run_load
from tests.emulator.test_sdk_oracle import remove_request, sdk
from tests.support.backends import POD_HEADER, Backend, backends
from tests.support.emulator import EmulatorProcess, start_emulator

GROUP = "sgp-dataplane00001"


def listen(emulator: EmulatorProcess, members: list[dict[str, Any]], **extra: Any) -> str:
    """Creates the group with these servers, opens its listener; the proxy's URL."""
    emulator.add_group(GROUP, members, **extra)
    return str(emulator.admin("POST", f"server-groups/{GROUP}/listener")["url"])


def traffic(emulator: EmulatorProcess, **query: Any) -> dict[str, Any]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return emulator.admin("GET", f"server-groups/{GROUP}/traffic?{qs}")  # type: ignore[no-any-return]


def per_server(view: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The traffic view's servers by port."""
    return {int(s["backend"].rsplit(":", 1)[1]): s for s in view["servers"]}


def get(url: str, timeout: float = 10) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def record(emulator: EmulatorProcess, port: int) -> dict[str, Any]:
    """The removal record of the server on ``port``."""
    rows = [r for r in emulator.admin("GET", f"server-groups/{GROUP}/history") if r["Port"] == port]
    assert len(rows) == 1, rows
    return rows[0]  # type: ignore[no-any-return]


def remove(emulator: EmulatorProcess, port: int) -> str:
    return str(
        sdk(emulator).remove_servers_from_server_group(remove_request("127.0.0.1", group=GROUP, port=port)).body.job_id
    )


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- the listener --------------------------------------------------------------------------------------------------


def refuses(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


def test_listener_opens_once_and_closes_with_the_group_and_the_reset(plane: EmulatorProcess) -> None:
    with backends("pod-a") as (a,):
        plane.add_group(GROUP, [a.member()])
        opened = plane.admin("POST", f"server-groups/{GROUP}/listener")
        assert opened["port"] > 0 and opened["url"] == f"http://127.0.0.1:{opened['port']}"
        again = plane.admin("POST", f"server-groups/{GROUP}/listener")
        assert again["port"] == opened["port"]
        assert [x["server_group_id"] for x in plane.admin("GET", "listeners")] == [GROUP]
        assert get(opened["url"] + "/")[1][POD_HEADER] == "pod-a"

        assert plane.admin("DELETE", f"server-groups/{GROUP}/listener") == {"closed": True}
        assert refuses(opened["url"])
        assert traffic(plane)["totals"]["requests"] == 1  # the traffic outlives the listener

        url = plane.admin("POST", f"server-groups/{GROUP}/listener")["url"]
        assert get(url + "/")[0] == 200
        plane.admin("DELETE", f"server-groups/{GROUP}")
        assert refuses(url)
        assert traffic(plane)["listener"] is None and traffic(plane)["totals"]["requests"] == 2

        plane.add_group(GROUP, [a.member()])
        url = plane.admin("POST", f"server-groups/{GROUP}/listener")["url"]
        plane.admin("POST", "reset")
        assert refuses(url) and plane.admin("GET", "listeners") == []
        with pytest.raises(urllib.error.HTTPError) as no_traffic:
            traffic(plane)
        assert no_traffic.value.code == 404


def test_listener_refusals(plane: EmulatorProcess) -> None:
    for method, body, code in (("POST", None, 404), ("GET", None, 404)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            plane.admin(method, "server-groups/sgp-nosuchgroup0001/listener", body)
        assert refused.value.code == code
    plane.add_group(GROUP, [])
    with pytest.raises(urllib.error.HTTPError) as bad:
        plane.admin("POST", f"server-groups/{GROUP}/listener", {"port": "x"})
    assert bad.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as bad_query:
        plane.admin("GET", f"server-groups/{GROUP}/traffic?events=some")
    assert bad_query.value.code == 400


def test_the_emulator_process_closes_its_listeners_when_it_stops(tmp_path: Path) -> None:
    own = start_emulator(tmp_path)
    try:
        own.add_group(GROUP, [])
        url = own.admin("POST", f"server-groups/{GROUP}/listener")["url"]
        assert get(url + "/")[0] == 503
    finally:
        own.stop()
    assert own.process.returncode == 0
    assert refuses(url)


# -- choosing a server ---------------------------------------------------------------------------------------------


async def test_requests_spread_by_weight_and_weight_zero_gets_none(plane: EmulatorProcess) -> None:
    with backends("pod-a", "pod-b", "pod-c", "pod-zero") as (a, b, c, zero):
        url = listen(plane, [a.member(100), b.member(50), c.member(25), zero.member(0)])
        result = await run_load(url + "/", rate=200, count=350, duration=10)
    pods = result.summary()["by_pod"]
    # Smooth weighted round robin: every round of 175 requests gives each server exactly its weight.
    assert pods == {"pod-a": 200, "pod-b": 100, "pod-c": 50}
    assert (len(a.hits), len(b.hits), len(c.hits), len(zero.hits)) == (200, 100, 50, 0)
    view = traffic(plane)
    assert view["totals"] == {"requests": 350, "ok": 350, "failures": dict.fromkeys(view["totals"]["failures"], 0)}
    counts = {port: s["requests"] for port, s in per_server(view).items()}
    assert counts == {a.port: 200, b.port: 100, c.port: 50}
    later = traffic(plane, since=result.samples[300].sent)["totals"]["requests"]
    assert 0 < later < 350


async def test_a_removed_server_gets_no_new_request_once_its_job_took_effect(plane: EmulatorProcess) -> None:
    """Default: a server gets new requests while its removal job runs (Removing), none from the job's end."""
    await asyncio.to_thread(plane.admin, "PUT", "behaviour", {"job_seconds": 1.0})
    with backends("pod-a", "pod-b") as (a, b):
        url = listen(plane, [a.member(), b.member()])
        load = asyncio.create_task(run_load(url + "/", rate=100, count=300, duration=3))
        await asyncio.sleep(0.8)
        await asyncio.to_thread(remove, plane, a.port)
        result = await load
        rec = await asyncio.to_thread(record, plane, a.port)
        view = await asyncio.to_thread(traffic, plane, events="all")
    removing, out = rec["removing_at"], rec["out_of_rotation_at"]
    assert out == pytest.approx(removing + 1.0, abs=0.01) and rec["ended"] == "no_draining"
    routed = [e["at"] for e in view["events"] if e["backend"].endswith(f":{a.port}")]
    assert routed and max(routed) < out  # the proxy chose it for no request from the job's end on
    assert sum(1 for t in routed if removing <= t < out) >= 20  # ~100 at 100/s while the job ran
    assert max(a.arrivals()) < out + 0.05  # and no request reached it later (one chosen just before may be in transit)
    assert sum(1 for t in b.arrivals() if t > out) >= 50
    assert result.summary()["failed"] == 0 and result.summary()["sent"] == 300


async def test_with_removing_gets_requests_false_new_requests_stop_at_the_call(plane: EmulatorProcess) -> None:
    await asyncio.to_thread(plane.admin, "PUT", "behaviour", {"job_seconds": 1.0, "removing_gets_requests": False})
    with backends("pod-a", "pod-b") as (a, b):
        url = listen(plane, [a.member(), b.member()])
        load = asyncio.create_task(run_load(url + "/", rate=100, count=200, duration=2))
        await asyncio.sleep(0.8)
        await asyncio.to_thread(remove, plane, a.port)
        result = await load
        rec = await asyncio.to_thread(record, plane, a.port)
    assert max(a.arrivals()) < rec["removing_at"] + 0.05
    assert sum(1 for t in a.arrivals() if t < rec["removing_at"]) >= 20
    assert sum(1 for t in b.arrivals() if t > rec["removing_at"]) >= 50
    assert result.summary()["failed"] == 0


async def test_an_adding_server_gets_nothing_until_available(plane: EmulatorProcess) -> None:
    await asyncio.to_thread(plane.admin, "PUT", "behaviour", {"add_job_seconds": 1.0})
    with backends("pod-a", "pod-b") as (a, b):
        url = listen(plane, [a.member()])
        load = asyncio.create_task(run_load(url + "/", rate=100, count=250, duration=2.5))
        await asyncio.sleep(0.5)
        request = alb.AddServersToServerGroupRequest(
            server_group_id=GROUP,
            servers=[alb.AddServersToServerGroupRequestServers(server_id="127.0.0.1", server_type="Ip", port=b.port)],
        )
        added = await asyncio.to_thread(sdk(plane).add_servers_to_server_group, request)
        result = await load
        jobs = await asyncio.to_thread(plane.admin, "GET", "jobs")
    job = next(j for j in jobs if j["Id"] == added.body.job_id)
    available = job["CreateTime"] / 1000 + 1.0  # the job's end (CreateTime is in whole ms, rounded down)
    assert job["Status"] == "Succeeded"
    assert b.arrivals() and min(b.arrivals()) >= available
    assert sum(1 for t in a.arrivals() if job["CreateTime"] / 1000 <= t < available) >= 50  # A alone while Adding
    assert result.summary()["by_pod"]["pod-b"] >= 30 and result.summary()["failed"] == 0


# -- draining ------------------------------------------------------------------------------------------------------


async def long_request(url: str, delay: float) -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(f"{url}/?delay={delay}") as resp:
        await resp.read()
        return resp.status, dict(resp.headers), time.monotonic() - started


async def test_a_draining_servers_long_request_finishes_within_the_drain(plane: EmulatorProcess) -> None:
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()], connection_drain={"enabled": True, "timeout_seconds": 5})
        request = asyncio.create_task(long_request(url, 1.5))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(remove, plane, a.port)
        await asyncio.sleep(0.5)  # the job (0.3 s) is over: A drains
        group = await asyncio.to_thread(plane.group, GROUP)
        assert [s.get("DrainingUntil") is not None for s in group["Servers"]] == [True]
        during = await asyncio.to_thread(get, url + "/")  # no new request to a draining server
        status, headers, _ = await request
        rec = await asyncio.to_thread(record, plane, a.port)
        view = await asyncio.to_thread(traffic, plane)
    assert status == 200 and headers[POD_HEADER] == "pod-a"
    assert during[0] == 503 and during[1]["X-Emulator-Failure"] == "no_server"
    assert len(a.hits) == 1 and a.hits[0].answered
    # Nothing in flight any more: the removal completed at once, not at the drain timeout.
    assert rec["ended"] == "idle" and rec["gone_at"] == pytest.approx(a.hits[0].ended, abs=0.1)
    assert rec["gone_at"] < rec["draining_at"] + 5
    server = per_server(view)[a.port]
    assert server["ok"] == 1 and server["failures"]["cut"] == 0
    assert view["totals"]["failures"]["no_server"] == 1


async def test_a_draining_servers_long_request_is_cut_when_the_drain_timeout_ends(plane: EmulatorProcess) -> None:
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()], connection_drain={"enabled": True, "timeout_seconds": 0.5})
        request = asyncio.create_task(long_request(url, 3.0))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(remove, plane, a.port)
        status, headers, took = await request
        rec = await asyncio.to_thread(record, plane, a.port)
        view = await asyncio.to_thread(traffic, plane)
    assert status == 500 and headers["X-Emulator-Failure"] == "cut"
    assert took < 2.0  # cut, not answered at 3 s
    assert rec["ended"] == "drain_timeout" and rec["gone_at"] == pytest.approx(rec["draining_at"] + 0.5, abs=0.01)
    (event,) = view["events"]
    assert event["kind"] == "cut" and event["reason"] == "drain_timeout"
    assert event["ended"] == pytest.approx(rec["gone_at"], abs=0.15)
    assert per_server(view)[a.port]["failures"]["cut"] == 1
    assert not a.hits[0].answered or a.hits[0].ended is None or a.hits[0].ended > rec["gone_at"]


@pytest.mark.parametrize("policy", ["finish", "cut"])
async def test_a_request_in_flight_to_a_server_removed_without_draining(plane: EmulatorProcess, policy: str) -> None:
    await asyncio.to_thread(plane.admin, "PUT", "behaviour", {"undrained_in_flight": policy})
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()])
        request = asyncio.create_task(long_request(url, 1.5))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(remove, plane, a.port)
        status, headers, took = await request
        rec = await asyncio.to_thread(record, plane, a.port)
    assert rec["ended"] == "no_draining"
    if policy == "finish":
        assert status == 200 and headers[POD_HEADER] == "pod-a" and took >= 1.5
    else:
        assert status == 500 and headers["X-Emulator-Failure"] == "cut" and took < 1.2


# -- failures ------------------------------------------------------------------------------------------------------


def test_no_server_in_rotation_is_503_counted(plane: EmulatorProcess) -> None:
    with backends("pod-zero") as (zero,):
        url = listen(plane, [zero.member(0)])
        for _ in range(3):
            status, headers, _ = get(url + "/")
            assert status == 503 and headers["X-Emulator-Failure"] == "no_server"
    view = traffic(plane)
    assert view["totals"]["requests"] == 3 and view["totals"]["failures"]["no_server"] == 3
    assert view["servers"] == [] and zero.hits == []
    assert [e["kind"] for e in view["events"]] == ["no_server"] * 3


def test_a_stopped_backend_counts_refused(plane: EmulatorProcess) -> None:
    with backends("pod-a", "pod-b") as (a, b):
        url = listen(plane, [a.member(), b.member()])
        b.stop()
        answers = [get(url + "/") for _ in range(10)]
    assert sorted(status for status, _, _ in answers) == [200] * 5 + [502] * 5
    view = traffic(plane)
    servers = per_server(view)
    assert servers[a.port]["ok"] == 5 and servers[b.port]["failures"]["refused"] == 5
    assert {e["reason"] for e in view["events"]} == {"ECONNREFUSED"}
    assert all(e["backend"].endswith(f":{b.port}") for e in view["events"])


def test_reset_timeout_backend_5xx_and_unroutable_are_counted_by_kind(plane: EmulatorProcess) -> None:
    plane.admin("PUT", "behaviour", {"proxy_request_timeout_seconds": 0.5})
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()])
        assert get(url + "/close")[0] == 502
        assert get(url + "/?delay=1.5")[0] == 504  # connected, but no whole answer in time
        assert get(url + "/status/503")[1][POD_HEADER] == "pod-a"
        assert get(url + "/")[0] == 200
        plane.add_group(GROUP, [{"server_id": "10.0.0.1", "server_type": "Ip", "port": 80}])  # not loopback
        status, headers, _ = get(url + "/")
    assert status == 502 and headers["X-Emulator-Failure"] == "unroutable"
    view = traffic(plane)
    assert view["totals"]["ok"] == 1
    assert {k: v for k, v in view["totals"]["failures"].items() if v} == {
        "reset": 1,
        "timeout": 1,
        "backend_5xx": 1,
        "unroutable": 1,
    }
    assert [e["kind"] for e in view["events"]] == ["reset", "timeout", "backend_5xx", "unroutable"]
    assert view["events"][1]["reason"] == "no whole answer within the request timeout"
    assert len(a.hits) == 4  # nothing was sent to 10.0.0.1's port, only to the backend


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes no new connection: a listener with a backlog of 0 that never accepts, its queue
    filled. Linux drops a SYN to a full accept queue (tcp_abort_on_overflow 0) and the client sends it again only 1 s
    later: connecting neither succeeds nor is refused, as to a pod whose address nothing answers any more."""
    listener = socket.socket()
    held: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):  # the kernel queues backlog + 1 connections (here 1); fill them, whatever the count
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            held.append(probe)
        else:
            raise AssertionError("the accept queue never filled: no port without connections on this machine")
        yield port
    finally:
        for sock in held:
            sock.close()
        listener.close()


def test_a_server_that_takes_no_connection_is_a_connect_timeout(plane: EmulatorProcess) -> None:
    """Within the connect timeout, not the request timeout: 504, kind timeout, and the reason says which timeout
    (aiohttp's connect timeout is a TimeoutError too, and was once reported as the request's)."""
    plane.admin("PUT", "behaviour", {"proxy_connect_timeout_seconds": 0.3, "proxy_request_timeout_seconds": 5.0})
    with unanswered_port() as port:
        url = listen(plane, [{"server_id": "127.0.0.1", "server_type": "Ip", "port": port}])
        started = time.monotonic()
        status, headers, _ = get(url + "/")
        took = time.monotonic() - started
    assert status == 504 and headers["X-Emulator-Failure"] == "timeout"
    (event,) = traffic(plane)["events"]
    assert event["kind"] == "timeout" and event["reason"] == "no connection within the connect timeout"
    assert event["backend"] == f"127.0.0.1:{port}"
    # At the connect timeout: before the SYN's retry at 1 s could connect, long before the request timeout.
    assert 300 <= event["latency_ms"] < 900 and took < 2.0


def test_behaviour_knobs_are_validated(plane: EmulatorProcess) -> None:
    for bad in (
        {"removing_gets_requests": "yes"},
        {"undrained_in_flight": "maybe"},
        {"proxy_request_timeout_seconds": 0},
        {"proxy_networks": ["not-a-cidr"]},
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            plane.admin("PUT", "behaviour", bad)
        assert refused.value.code == 400


def test_backend_helper_answers_with_its_name() -> None:
    """The helper the tests above trust: its name in the header and the body, its hits recorded."""
    b = Backend("pod-x").start()
    try:
        status, headers, body = get(f"http://127.0.0.1:{b.port}/?delay=0.1")
    finally:
        b.stop()
    assert (status, headers[POD_HEADER], body) == (200, "pod-x", "pod-x\n")
    assert len(b.hits) == 1 and b.hits[0].ended is not None and b.hits[0].ended - b.hits[0].arrived >= 0.1
