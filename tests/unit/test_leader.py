"""Leader election's timing: a leader stops acting before its Lease can expire, whatever its renewals do."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes_asyncio import client

from alb_membership.cluster.leader import LeaderElector, LeadershipLost, LeaseSettings


async def test_a_leader_stops_before_its_lease_expires_when_renewals_hang() -> None:
    s = LeaseSettings("ns", lease_seconds=1.5, renew_deadline_seconds=1.0, retry_seconds=0.2)
    async with client.ApiClient() as api:
        elector = LeaderElector(api, s, "me")
        written: list[float] = []

        async def renew() -> bool:
            written.append(time.monotonic())  # renewTime is the start of the attempt
            if len(written) == 1:
                return True  # one good renewal...
            if len(written) <= 4:
                return False  # ...refused ones...
            await asyncio.sleep(100)  # ...then the API server hangs
            return True

        elector._try = renew  # type: ignore[method-assign]
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(elector.keep(), 10)
        stopped = time.monotonic() - written[0]
        assert stopped < s.lease_seconds, f"acted {stopped:.2f}s after its last renewTime: two leaders"
