"""The client's reads: one unreadable job does not blind it to the others; every action has a rate limit."""

from __future__ import annotations

from typing import Any

import aiohttp

from alb_membership.alb import quotas
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, StaticCredentials
from alb_membership.alb.endpoints import Endpoint


async def test_a_job_with_an_unexpected_status_leaves_the_others_readable() -> None:
    async with aiohttp.ClientSession() as session:
        client = AlbClient(session, Endpoint.from_url("http://127.0.0.1:9"), StaticCredentials(Credentials("a", "b")))

        async def call(action: str, query: dict[str, str], *_: Any, **__: Any) -> dict[str, Any]:
            assert action == "ListAsynJobs"
            return {
                "Jobs": [
                    {"Id": "job-1", "Status": "Succeeded"},
                    {"Id": "job-2", "Status": "Cancelling"},  # not in the SDK's enum
                    {"Id": "job-3", "Status": "Failed", "ErrorCode": "X", "ErrorMessage": "y"},
                ]
            }

        client.call = call  # type: ignore[method-assign]
        found = await client.list_asyn_jobs(["job-1", "job-2", "job-3"])
    assert {k: j.status for k, j in found.items()} == {"job-1": "Succeeded", "job-3": "Failed"}


def test_every_action_the_operator_calls_has_a_limit_under_its_quota() -> None:
    limits = quotas.limiters(180, 60.0)
    called = {
        "RemoveServersFromServerGroup",
        "AddServersToServerGroup",
        "ListServerGroupServers",
        "ListServerGroups",
        "ListAsynJobs",
    }
    assert called <= limits.keys()
    for action, limiter in limits.items():
        assert limiter.calls / limiter.period <= quotas.QUOTAS[action] / quotas.PERIOD_SECONDS
