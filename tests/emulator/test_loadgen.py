"""The load generator (alb_emulator.loadgen): its rate, its bounds in count and time, a caller's stop, open loop,
loopback only, and what it records (the drain mark too), against the emulator's proxy in front of backends on
127.0.0.1 (tests/support/backends.py); and tests/support/traffic.py's Load in a thread and its names for failures."""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from alb_emulator.loadgen import check_loopback, run_load
from tests.emulator.test_dataplane import listen
from tests.support.backends import backends
from tests.support.emulator import EmulatorProcess
from tests.support.traffic import Load, describe, kind


async def test_a_fixed_rate_bounded_by_count(plane: EmulatorProcess) -> None:
    with backends("pod-a", "pod-b") as (a, b):
        url = listen(plane, [a.member(), b.member()])
        started = time.monotonic()
        result = await run_load(url + "/", rate=200, count=400, duration=30)
        took = time.monotonic() - started
    summary = result.summary()
    assert summary["requests"] == summary["sent"] == summary["ok"] == 400 and summary["failed"] == 0
    assert len(a.hits) + len(b.hits) == 400
    assert 1.95 <= took < 4.0  # 399 intervals of 5 ms, then the last answer; nowhere near the 30 s bound
    assert summary["rate_achieved"] == pytest.approx(200, rel=0.05)
    dues = [s.due for s in result.samples]
    assert all(d2 - d1 == pytest.approx(0.005, abs=1e-6) for d1, d2 in itertools.pairwise(dues))
    assert statistics.median(s.sent - s.due for s in result.samples) < 0.01
    assert summary["by_pod"] == {"pod-a": 200, "pod-b": 200}
    first = result.samples[0]
    assert first.status == 200 and first.pod in ("pod-a", "pod-b") and first.server_id == "127.0.0.1"
    assert first.backend is not None and first.latency_ms is not None and first.failure is None


async def test_bounded_by_duration(plane: EmulatorProcess) -> None:
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()])
        started = time.monotonic()
        result = await run_load(url + "/", rate=50, count=100_000, duration=1.0)
        took = time.monotonic() - started
    assert len(result.samples) == 50 == len(a.hits)  # due at 0, 20 ms, ..., 980 ms
    assert took < 1.5


async def test_until_stops_the_sending_once_it_is_true(plane: EmulatorProcess) -> None:
    """until() is asked before each request: true at the 21st question, 20 went out, nowhere near the 30 s bound;
    true from the start, none did."""
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()])
        asked = itertools.count()
        started = time.monotonic()
        result = await run_load(url + "/", rate=100, count=3000, duration=30, until=lambda: next(asked) >= 20)
        took = time.monotonic() - started
        never = await run_load(url + "/", rate=100, count=3000, duration=30, until=lambda: True)
    assert len(result.samples) == 20 == len(a.hits) and result.summary()["ok"] == 20
    assert next(asked) == 21  # asked before each of the 20, and once more: the answer that stopped it
    assert took < 1.5  # 19 intervals of 10 ms, then the last answer
    assert never.samples == [] and never.summary()["sent"] == 0


def test_load_runs_in_a_thread_until_stopped(plane: EmulatorProcess) -> None:
    """tests/support/traffic.Load: it sends from start() to stop() (here 0.5 s of a 30 s bound), and its result
    holds every request."""
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()])
        load = Load(url + "/", rate=100, max_seconds=30).start()
        time.sleep(0.5)
        started = time.monotonic()
        result = load.stop()
        stopping = time.monotonic() - started
    assert 20 <= len(result.samples) <= 80 and result.summary()["ok"] == len(result.samples) == len(a.hits)
    assert stopping < 1.0  # the next request's turn, and the last answer


async def test_answers_marked_draining_are_recorded_and_counted(plane: EmulatorProcess) -> None:
    with backends("pod-a", "pod-b") as (a, b):
        a.draining = True  # as the workload answers after its SIGTERM
        url = listen(plane, [a.member(), b.member()])
        result = await run_load(url + "/", rate=100, count=20, duration=5)
    assert {(s.pod, s.draining) for s in result.samples} == {("pod-a", True), ("pod-b", False)}
    assert result.summary()["answered_draining"] == 10 and result.summary()["ok"] == 20


async def test_open_loop_a_slow_backend_does_not_slow_the_rate(plane: EmulatorProcess) -> None:
    with backends("pod-slow") as (slow,):
        url = listen(plane, [slow.member()])
        started = time.monotonic()
        result = await run_load(url + "/?delay=0.5", rate=50, count=25, duration=10, request_timeout=5)
        took = time.monotonic() - started
    assert result.summary()["ok"] == 25
    assert max(s.sent for s in result.samples) - min(s.sent for s in result.samples) < 0.7  # 24 intervals of 20 ms
    assert 0.95 <= took < 1.6  # the last sent at 0.48 s, answered 0.5 s later
    assert min(s.latency_ms or 0 for s in result.samples) >= 500


async def test_more_in_flight_than_allowed_is_recorded_as_overload(plane: EmulatorProcess) -> None:
    with backends("pod-slow") as (slow,):
        url = listen(plane, [slow.member()])
        result = await run_load(url + "/?delay=1.0", rate=50, count=20, duration=10, max_in_flight=5)
    errors = [s.error for s in result.samples]
    assert errors.count("overload") == 15 and errors[:5] == [None] * 5
    assert result.summary()["ok"] == 5 and len(slow.hits) == 5


async def test_failures_are_recorded_with_the_proxys_kind(plane: EmulatorProcess) -> None:
    with backends("pod-a", "pod-gone") as (a, gone):
        url = listen(plane, [a.member(), gone.member()])
        gone.stop()
        result = await run_load(url + "/", rate=100, count=20, duration=5)
    summary = result.summary()
    assert summary["ok"] == 10 and summary["failed"] == 10
    assert summary["by_status"] == {"200": 10, "502": 10} and summary["by_failure"] == {"refused": 10}
    # The proxy's kind, not its status (502 is also a reset's or an unroutable server's).
    assert Counter(kind(s) for s in result.samples) == {"200": 10, "refused": 10}
    assert describe(result.samples).startswith("10 failed ({'refused': 10}) from ")


async def test_a_client_side_connection_failure_is_refused() -> None:
    with backends("pod-a") as (a,):
        port = a.port
    result = await run_load(f"http://127.0.0.1:{port}/", rate=20, count=3, duration=5)
    assert [s.error for s in result.samples] == ["refused"] * 3 and result.summary()["failed"] == 3
    assert {kind(s) for s in result.samples} == {"client:refused"}  # no proxy answered: the client's own failure


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8080/", "http://example.com/", "https://127.0.0.1/", "http://[2001:db8::1]/", "ftp://127.0.0.1/"],
)
async def test_only_loopback_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|only"):
        await run_load(url, rate=1, count=1, duration=1)


@pytest.mark.parametrize(
    "bounds", [{"rate": 0}, {"rate": 10_000}, {"count": 0}, {"duration": 0}, {"duration": 7200}, {"request_timeout": 0}]
)
async def test_bounds_are_required(bounds: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await run_load("http://127.0.0.1:1/", **{"rate": 1, "count": 1, "duration": 1, **bounds})


def test_localhost_means_127_0_0_1_and_nothing_is_resolved() -> None:
    assert str(check_loopback("http://localhost:8080/x")) == "http://127.0.0.1:8080/x"
    assert str(check_loopback("http://127.0.0.2:1/")) == "http://127.0.0.2:1/"
    assert str(check_loopback("http://[::1]:1/")) == "http://[::1]:1/"


def test_the_command_line_writes_every_request_and_a_summary(plane: EmulatorProcess, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    with backends("pod-a") as (a,):
        url = listen(plane, [a.member()])
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "alb_emulator.loadgen",
                url + "/",
                "--rate",
                "100",
                "--count",
                "30",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    summary = json.loads(proc.stdout)
    assert summary["ok"] == 30 and summary["by_pod"] == {"pod-a": 30}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and {r["pod"] for r in rows} == {"pod-a"} and rows[0]["status"] == 200
    refused = subprocess.run(
        [sys.executable, "-m", "alb_emulator.loadgen", "http://192.0.2.1/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr
