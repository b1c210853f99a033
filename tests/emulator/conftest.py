"""What the tests against the emulator share: an HTTP session for the operator's ALB client (tests/support/alb.py),
and the emulator with its data plane's knobs put back after the test (test_dataplane, test_loadgen)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.emulator import EmulatorProcess

DATAPLANE_DEFAULTS = {
    "removing_gets_requests": True,
    "drain_ends_when_idle": True,
    "undrained_in_flight": "finish",
    "proxy_request_timeout_seconds": 60.0,
    "proxy_connect_timeout_seconds": 5.0,
    "proxy_networks": ["127.0.0.0/8", "::1/128"],
    "job_seconds": 0.3,
    "add_job_seconds": None,
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def plane(emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The session's emulator (reset: no group, no listener, no traffic); the data plane's knobs back afterwards,
    its listeners closed and their traffic forgotten."""
    yield emulator
    emulator.admin("POST", "reset")
    emulator.admin("PUT", "behaviour", DATAPLANE_DEFAULTS)
