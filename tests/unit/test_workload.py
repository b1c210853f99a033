"""The real nodes' test workload (workload/albm_workload.py) as a process on 127.0.0.1: its answers, its readiness,
and its drain on SIGTERM (the request in flight finishes, idle keep-alive connections close, new ones are refused,
exit 0)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localcluster.cluster import free_port

SERVER = Path(__file__).resolve().parents[2] / "workload" / "albm_workload.py"


@dataclass
class Workload:
    process: subprocess.Popen[str]
    port: int

    def get(self, path: str = "/", timeout: float = 5.0) -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()


def start(**env: str) -> Workload:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER)],
        env={**os.environ, "POD_NAME": "web-0", "PORT": str(port), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Workload(proc, port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the workload did not start: {proc.communicate()[0]}") from None
            time.sleep(0.05)


@pytest.fixture
def workload() -> Iterator[Workload]:
    w = start()
    yield w
    if w.process.poll() is None:
        w.process.kill()
    w.process.communicate()


def test_answers_with_its_name_and_delays_on_request(workload: Workload) -> None:
    status, body, headers = workload.get()
    assert (status, body, headers["x-pod-name"]) == (200, "web-0\n", "web-0")
    started = time.monotonic()
    assert workload.get("/?delay=0.5")[0] == 200
    assert time.monotonic() - started >= 0.5
    assert workload.get("/?delay=soon")[0] == 400
    assert workload.get("/healthz")[0] == 200
    assert workload.get("/nope")[0] == 404
    stats = json.loads(workload.get("/stats")[1])
    assert stats == {"pod": "web-0", "served": 2, "in_flight": 0, "served_draining": 0, "draining": False}


def test_ready_only_after_its_warm_up() -> None:
    w = start(READY_AFTER_SECONDS="1")
    try:
        assert w.get("/ready")[0] == 503
        time.sleep(1.1)
        assert w.get("/ready")[0] == 200
    finally:
        w.process.kill()
        w.process.communicate()


def test_sigterm_finishes_the_request_in_flight_closes_idle_connections_and_refuses_new_ones(
    workload: Workload,
) -> None:
    idle = http.client.HTTPConnection("127.0.0.1", workload.port, timeout=5)
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"web-0\n"  # a keep-alive connection, idle from now on

    replies: list[tuple[int, str, dict[str, str]]] = []
    long = threading.Thread(target=lambda: replies.append(workload.get("/?delay=1.5")))
    long.start()
    time.sleep(0.3)
    workload.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", workload.port), timeout=1)
    idle.sock.settimeout(2)  # type: ignore[union-attr]
    assert idle.sock.recv(1) == b"", "the idle keep-alive connection was not closed"  # type: ignore[union-attr]
    long.join(timeout=5)
    assert replies and replies[0][0] == 200 and replies[0][1] == "web-0\n"
    assert replies[0][2].get("x-draining") == "1" and replies[0][2].get("connection") == "close"
    out, _ = workload.process.communicate(timeout=5)
    assert workload.process.returncode == 0
    assert "exiting: served 2, 1 of them while draining" in out, out
