"""Requests through the emulator's data plane to pods on the real node: the group's listener opened with the node's
bridge allowed, and a load generator (alb_emulator/loadgen.py) running in a thread of its own until the caller stops
it, bounded in count and time whatever the caller does. The tests and bench/traffic.py use these."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from alb_emulator.loadgen import LoadResult, Sample, run_load
from tests.support.emulator import EmulatorProcess

LOOPBACK = "127.0.0.0/8"


def open_listener(emulator: EmulatorProcess, group: str, subnets: Iterable[str]) -> str:
    """The group's proxy on loopback, allowed to connect to loopback and ``subnets`` only (the real nodes' bridges);
    returns its URL."""
    for net in subnets:
        if not ipaddress.ip_network(net).is_private:
            raise ValueError(f"{net} is not a private network: not a target for the proxy")
    emulator.admin("PUT", "behaviour", {"proxy_networks": [LOOPBACK, *subnets]})
    listener = emulator.admin("POST", f"server-groups/{group}/listener", {})
    return f"http://127.0.0.1:{listener['port']}/"


class Load:
    """``rate`` requests a second to ``url`` from a thread, from ``start()`` until ``stop()`` or ``max_seconds``."""

    def __init__(self, url: str, rate: float = 200.0, max_seconds: float = 300.0, request_timeout: float = 5.0):
        self.url, self.rate, self.max_seconds, self.request_timeout = url, rate, max_seconds, request_timeout
        self._stop = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        try:
            self._result = asyncio.run(
                run_load(
                    self.url,
                    rate=self.rate,
                    count=int(self.rate * self.max_seconds) + 1,
                    duration=self.max_seconds,
                    request_timeout=self.request_timeout,
                    until=self._stop.is_set,
                )
            )
        except BaseException as exc:  # handed to stop()'s caller
            self._error = exc

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(timeout=self.max_seconds + self.request_timeout + 10)
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("the load generator did not finish")
        return self._result

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        if not self._stop.is_set():
            self.stop()


def client_timeout(emulator: EmulatorProcess) -> float:
    """Longer than the proxy's connect timeout: a request to an address nobody answers ends with the proxy's
    verdict (504), not with the client giving up first."""
    return float(emulator.admin("GET", "behaviour")["proxy_connect_timeout_seconds"]) + 3.0


def failed(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if not s.ok]


def kind(sample: Sample) -> str:
    """What became of a request: the proxy's failure kind if it made one (refused, timeout, ...), else the client's
    own error (``client:refused``, ``client:timeout``, ...) if no answer came, else the HTTP status."""
    if sample.failure:
        return sample.failure
    if sample.error:
        return f"client:{sample.error}"
    return str(sample.status)


def describe(samples: Iterable[Sample]) -> str:
    """Failures by kind with the first and last time: for assertion messages."""
    bad = failed(samples)
    if not bad:
        return "no failure"
    kinds = Counter(kind(s) for s in bad)
    first, last = (time.strftime("%H:%M:%S", time.localtime(s.sent)) for s in (bad[0], bad[-1]))
    return f"{len(bad)} failed ({dict(kinds)}) from {first} to {last}"
