"""The project's ALB client against the emulator: removals and additions, retries with one job in the end, errors,
paging."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.error
from collections.abc import Iterator

import aiohttp
import pytest

from alb_membership.alb import request as wire
from alb_membership.alb.batching import batches
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.errors import AlbError, AlbThrottled
from alb_membership.alb.models import AddAnswer, ListedServer, Server
from alb_membership.alb.retry import RetryPolicy
from alb_membership.model.health import advice
from tests.support.alb import alb_client
from tests.support.emulator import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    STS_KEY_ID,
    STS_SECRET,
    STS_TOKEN,
    EmulatorProcess,
    server,
)

GROUP = "sgp-client00000001"
FAST_RETRY = RetryPolicy(base_seconds=0.02, cap_seconds=0.3, total_seconds=15, max_attempts=30)


def ip(i: int) -> str:
    return f"10.20.{i // 250}.{i % 250}"


def servers(n: int) -> list[Server]:
    return [Server("Ip", ip(i), 8080) for i in range(n)]


@pytest.fixture
def client(session: aiohttp.ClientSession, emulator: EmulatorProcess) -> AlbClient:
    emulator.add_group(GROUP, [server(ip(i)) for i in range(141)])
    return alb_client(session, emulator, retry=FAST_RETRY)


def members(emulator: EmulatorProcess) -> set[str]:
    return {s["ServerId"] for s in emulator.group(GROUP)["Servers"]}


async def wait_done(client: AlbClient, job_id: str) -> str:

    for _ in range(200):
        job = (await client.list_asyn_jobs([job_id]))[job_id]
        if job.status != "Processing":
            return job.status
        await asyncio.sleep(0.05)
    raise AssertionError("job did not finish")


async def test_removes_1_40_and_100_servers_in_1_1_and_3_calls(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0})
    all_servers = servers(141)
    plan = [all_servers[:1], all_servers[1:41], all_servers[41:141]]
    calls = []
    for n, chunk in enumerate(plan):
        parts = batches(chunk, seed=f"seed-{n}")
        calls.append(len(parts))
        for part in parts:
            removal = await client.remove_servers(GROUP, part.servers, part.client_token)
            assert removal.outcome == "accepted" and removal.job_id
            assert await wait_done(client, removal.job_id) == "Succeeded"
    assert calls == [1, 1, 3]
    assert members(emulator) == set()
    sizes = [len(r["servers"]) for r in emulator.requests("RemoveServersFromServerGroup")]
    assert sizes == [1, 40, 40, 40, 20]


async def test_retries_throttling_5xx_and_resets_with_one_job(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin(
        "PUT",
        "faults",
        {
            "script": [
                {"kind": "error", "code": "Throttling.User"},
                {"kind": "error", "code": "ServiceUnavailable"},
                {"kind": "reset"},
                {"kind": "http", "status": 502},
                {"kind": "truncated"},
            ],
            "actions": ["RemoveServersFromServerGroup"],
        },
    )
    removal = await client.remove_servers(GROUP, servers(2), "tok-retry-1")
    assert removal.outcome == "accepted"
    log = emulator.requests("RemoveServersFromServerGroup")
    assert [r["code"] for r in log] == [
        "Throttling.User",
        "ServiceUnavailable",
        "FAULT:reset",
        "FAULT:http",
        "FAULT:truncated",
        "OK",
    ]
    assert {r["client_token"] for r in log} == {"tok-retry-1"}
    assert len(emulator.admin("GET", "jobs")) == 1
    assert client.retries == 5


async def test_truncated_answer_after_the_job_started_does_not_start_a_second(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    # The truncation hides a JobId the cloud did create; the retry with the same token gets that JobId back.
    first = await client.remove_servers(GROUP, servers(1), "tok-trunc")
    emulator.admin("PUT", "faults", {"script": [{"kind": "truncated"}]})
    again = await client.remove_servers(GROUP, servers(1), "tok-trunc")
    assert again.job_id == first.job_id
    assert len(emulator.admin("GET", "jobs")) == 1


async def test_honours_retry_after(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"retry_after_ms": 700, "rate_limits": {"ListServerGroups": [1, 0.5]}})
    await client.list_server_groups([GROUP])
    await client.list_server_groups([GROUP])
    log = emulator.requests("ListServerGroups")
    assert [r["code"] for r in log] == ["OK", "Throttling.User", "OK"]
    assert log[2]["time"] - log[1]["time"] >= 0.7


async def test_server_group_busy_is_retried_until_free(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0.6})
    first = await client.remove_servers(GROUP, servers(1), "tok-a")
    second = await client.remove_servers(GROUP, servers(2)[1:], "tok-b")
    assert first.job_id != second.job_id
    codes = [r["code"] for r in emulator.requests("RemoveServersFromServerGroup")]
    assert codes[0] == "OK" and codes[-1] == "OK" and "IncorrectStatus.ServerGroup" in codes


async def test_gives_up_when_the_time_budget_runs_out(
    session: aiohttp.ClientSession, client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.admin("PUT", "faults", {"rates": {"SystemBusy": 1.0}})
    impatient = alb_client(session, emulator, retry=RetryPolicy(base_seconds=0.05, cap_seconds=0.1, total_seconds=0.5))
    with pytest.raises(AlbError) as raised:
        await impatient.remove_servers(GROUP, servers(1), "tok-busy")
    assert raised.value.code == "SystemBusy"
    assert raised.value.retryable
    assert 2 <= len(emulator.requests()) <= 20


async def test_unknown_group_fails_at_once(client: AlbClient, emulator: EmulatorProcess) -> None:
    with pytest.raises(AlbError) as raised:
        await client.remove_servers("sgp-unknown", servers(1), "tok-u")
    assert raised.value.code == "ResourceNotFound.ServerGroup"
    assert raised.value.http_status == 404
    assert raised.value.request_id
    assert not raised.value.retryable
    assert len(emulator.requests()) == 1
    assert "ResourceNotFound.ServerGroup" in str(raised.value) and raised.value.request_id in str(raised.value)


async def test_already_removed_and_dry_run(client: AlbClient, emulator: EmulatorProcess) -> None:
    gone = await client.remove_servers(GROUP, [Server("Ip", "10.99.0.1", 8080)], "tok-gone")
    assert gone.outcome == "already_removed" and gone.job_id is None
    dry = await client.remove_servers(GROUP, servers(3), "tok-dry", dry_run=True)
    assert dry.outcome == "dry_run_passed"
    assert len(members(emulator)) == 141


async def test_sts_credentials(session: aiohttp.ClientSession, client: AlbClient, emulator: EmulatorProcess) -> None:
    sts = alb_client(session, emulator, Credentials(STS_KEY_ID, STS_SECRET, STS_TOKEN, provider="sts"), FAST_RETRY)
    assert len(await sts.list_server_group_servers(GROUP)) == 141
    wrong = alb_client(session, emulator, Credentials(STS_KEY_ID, STS_SECRET, "CAIS-wrong"), FAST_RETRY)
    with pytest.raises(AlbError, match=r"InvalidSecurityToken\.Mismatch"):
        await wrong.list_server_groups()


async def test_pages_and_job_chunks(client: AlbClient, emulator: EmulatorProcess) -> None:
    assert len(await client.list_server_group_servers(GROUP)) == 141
    emulator.admin("PUT", "behaviour", {"job_seconds": 0})
    job_ids = []
    for i in range(45):
        removal = await client.remove_servers(GROUP, [Server("Ip", ip(i), 8080)], f"tok-{i}")
        assert removal.job_id
        job_ids.append(removal.job_id)
    jobs = await client.list_asyn_jobs(job_ids)
    assert set(jobs) == set(job_ids) and {j.status for j in jobs.values()} == {"Succeeded"}
    assert len(emulator.requests("ListAsynJobs")) == 3  # 20 + 20 + 5


async def test_failed_job_reports_its_error(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0, "job_failure_rate": 1.0, "job_failure_code": "InternalError"})
    removal = await client.remove_servers(GROUP, servers(1), "tok-fail")
    assert removal.job_id
    job = (await client.list_asyn_jobs([removal.job_id]))[removal.job_id]
    assert (job.status, job.error_code) == ("Failed", "InternalError")
    assert ip(0) in members(emulator)


# -- the emulator refuses what the cloud's gateway refuses --------------------------------------------------------


async def post(
    session: aiohttp.ClientSession,
    emulator: EmulatorProcess,
    signed: wire.SignedRequest,
    query_string: str | None = None,
    body: bytes | None = None,
) -> dict[str, str]:
    from yarl import URL

    url = URL(f"{emulator.url}/?{query_string if query_string is not None else signed.query_string}", encoded=True)
    async with session.post(url, headers=signed.headers, data=signed.body if body is None else body) as resp:
        return await resp.json(content_type=None)  # type: ignore[no-any-return]


def signed_list(emulator: EmulatorProcess, **kw: object) -> wire.SignedRequest:
    return wire.sign(
        "ListServerGroups",
        {"MaxResults": "10"},
        {"Note": "x"},
        Endpoint.from_url(emulator.url).host,
        Credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET),
        **kw,
    )  # type: ignore[arg-type]


async def test_gateway_refuses_tampering_stale_dates_and_replays(
    session: aiohttp.ClientSession, emulator: EmulatorProcess
) -> None:
    good = signed_list(emulator)
    assert "ServerGroups" in await post(session, emulator, good)
    assert (await post(session, emulator, good))["Code"] == "SignatureNonceUsed"
    assert (await post(session, emulator, signed_list(emulator), query_string="MaxResults=11"))[
        "Code"
    ] == "SignatureDoesNotMatch"
    assert (await post(session, emulator, signed_list(emulator), body=b"Note=y"))["Code"] == "SignatureDoesNotMatch"
    stale = signed_list(emulator, now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20))
    assert (await post(session, emulator, stale))["Code"] == "InvalidTimeStamp.Expired"
    forged = signed_list(emulator)
    forged.headers["authorization"] = forged.headers["authorization"][:-4] + "0000"
    assert (await post(session, emulator, forged))["Code"] == "SignatureDoesNotMatch"
    unsigned = signed_list(emulator)
    unsigned.headers["x-acs-extra"] = "not signed"
    assert (await post(session, emulator, unsigned))["Code"] == "IncompleteSignature"


async def test_throttled_error_type(
    session: aiohttp.ClientSession, client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.admin("PUT", "faults", {"rates": {"Throttling.User": 1.0}})
    impatient = alb_client(session, emulator, retry=RetryPolicy(base_seconds=0.01, cap_seconds=0.02, total_seconds=0.2))
    with pytest.raises(AlbThrottled):
        await impatient.list_server_groups()


async def test_a_read_with_a_deadline_stays_within_it_whatever_its_retries(
    session: aiohttp.ClientSession, emulator: EmulatorProcess
) -> None:
    """A throttled read must not outlive its caller's budget (the pipeline's 30 s wait for a busy group): the
    client's own retries (up to 60 s by default) are cut to the deadline."""

    emulator.add_group(GROUP, [server(ip(1))])
    emulator.admin("PUT", "faults", {"rates": {"Throttling.User": 1.0}, "actions": ["ListServerGroups"]})
    client = alb_client(session, emulator, retry=RetryPolicy())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AlbError):
        await client.list_server_groups([GROUP], deadline=started + 1.0)
    assert loop.time() - started < 2.0


async def test_a_server_shifted_between_pages_is_not_taken_for_gone(
    session: aiohttp.ClientSession, emulator: EmulatorProcess
) -> None:
    """150 servers, two pages: a server the first page had is removed before the second page is read, so every
    later server moves up one place and one of them is on neither page. out_of_rotation must not count it."""
    emulator.add_group(GROUP, [server(ip(i)) for i in range(150)])
    client = alb_client(session, emulator, retry=FAST_RETRY)
    real_call = client.call
    pages = 0

    async def call(
        action: str, query: dict[str, str], form: dict[str, str] | None = None, deadline: float | None = None
    ):  # type: ignore[no-untyped-def]
        nonlocal pages
        body = await real_call(action, query, form, deadline)
        if action == "ListServerGroupServers" and "ServerIds.1" not in query:
            pages += 1
            if pages == 1:  # someone else removes server 0 between the two pages
                emulator.admin(
                    "POST",
                    "server-groups",
                    {"id": GROUP, "type": "Ip", "servers": [server(ip(i)) for i in range(1, 150)]},
                )
        return body

    client.call = call  # type: ignore[method-assign]
    shifted = Server("Ip", ip(100), 8080)  # page 2 now starts at what was index 101
    assert await client.out_of_rotation(GROUP, [shifted, Server("Ip", ip(0), 8080)]) == {Server("Ip", ip(0), 8080)}
    assert pages >= 3, "the disagreeing listing was taken again"


# -- adding servers -----------------------------------------------------------------------------------------------


@pytest.fixture
def add_jobs(emulator: EmulatorProcess) -> Iterator[None]:
    """add_job_seconds back to its default afterwards: the shared emulator's reset keeps behaviour."""
    yield
    emulator.admin("PUT", "behaviour", {"add_job_seconds": None})


NEW = [Server("Ip", f"10.30.0.{i}", 8080) for i in range(1, 4)]


async def test_add_servers_with_weights_listed_adding_then_available(
    client: AlbClient, emulator: EmulatorProcess, add_jobs: None
) -> None:
    # Add jobs timed apart from removals: a quick add while removals would take a minute.
    emulator.admin("PUT", "behaviour", {"job_seconds": 60, "add_job_seconds": 0.5})
    weights = dict(zip(NEW, (0, 50, 100), strict=True))
    added = await client.add_servers(GROUP, NEW, "tok-add-1", weights=weights)
    assert added.outcome == "accepted" and added.job_id and added.request_id
    during = await client.listed_servers(GROUP, NEW)
    assert {s: (x.status, x.weight) for s, x in during.items()} == {s: ("Adding", w) for s, w in weights.items()}
    assert await wait_done(client, added.job_id) == "Succeeded"
    after = await client.listed_servers(GROUP)
    assert len(after) == 144
    assert {s: (after[s].status, after[s].weight) for s in NEW} == {s: ("Available", w) for s, w in weights.items()}
    assert after[Server("Ip", ip(0), 8080)] == ListedServer(Server("Ip", ip(0), 8080), "Available", 100)
    (record,) = emulator.admin("GET", "tokens")
    assert [s["Weight"] for s in record["params"]["Servers"]] == ["0", "50", "100"]


async def test_each_addition_is_in_the_groups_additions_history_with_its_times(
    client: AlbClient, emulator: EmulatorProcess, add_jobs: None
) -> None:
    """adding_at is when the call was accepted, available_at when its job ended (the listing shows Available from
    then on): a benchmark times a pod's server into the group from these."""
    emulator.admin("PUT", "behaviour", {"job_seconds": 60, "add_job_seconds": 0.4})
    before = time.time()
    added = await client.add_servers(GROUP, NEW[:2], "tok-add-hist", weights=20)
    after_call = time.time()
    during = emulator.admin("GET", f"server-groups/{GROUP}/additions")
    assert [(r["ServerId"], r["job_id"], r["Weight"], r["available_at"], r["ended"]) for r in during] == [
        (s.server_id, added.job_id, 20, None, None) for s in NEW[:2]
    ]
    assert all(before <= r["adding_at"] <= after_call for r in during)
    assert await wait_done(client, added.job_id) == "Succeeded"
    listed = await client.listed_servers(GROUP, NEW[:2])
    done = emulator.admin("GET", f"server-groups/{GROUP}/additions?server_id={NEW[0].server_id}")
    assert [r["ended"] for r in done] == ["available"]
    (record,) = done
    assert record["available_at"] == pytest.approx(record["adding_at"] + 0.4, abs=0.01), "the job's own end"
    assert {x.status for x in listed.values()} == {"Available"}
    assert emulator.admin("GET", f"server-groups/{GROUP}/additions?since={after_call + 1}") == []
    assert emulator.admin("GET", f"server-groups/{GROUP}/history") == [], "removals only there"


async def test_a_failed_add_job_ends_its_addition_record_failed(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0.2, "job_failure_rate": 1.0})
    added = await client.add_servers(GROUP, NEW[:1], "tok-add-hist-fail")
    assert added.job_id and await wait_done(client, added.job_id) == "Failed"
    (record,) = emulator.admin("GET", f"server-groups/{GROUP}/additions")
    assert (record["ServerId"], record["available_at"], record["ended"]) == (NEW[0].server_id, None, "job_failed")


async def test_a_second_add_is_already_added_and_the_same_token_the_same_job(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0})
    first = await client.add_servers(GROUP, NEW[:2], "tok-add-a", weights=30)
    assert first.outcome == "accepted" and first.job_id
    assert await wait_done(client, first.job_id) == "Succeeded"
    again = await client.add_servers(GROUP, NEW[:2], "tok-add-a", weights=30)
    assert again == AddAnswer("accepted", again.request_id, first.job_id), "a retry of the same call: its job"
    second = await client.add_servers(GROUP, NEW[:2], "tok-add-b", weights=30)
    assert second.outcome == "already_added" and second.job_id is None and second.request_id
    # One server there already refuses the whole call: the new one is not added either.
    mixed = await client.add_servers(GROUP, NEW[1:], "tok-add-c")
    assert mixed.outcome == "already_added"
    assert NEW[2] not in await client.listed_servers(GROUP, NEW)
    assert len(emulator.admin("GET", "jobs")) == 1
    assert client.retries == 0


async def test_add_past_1000_servers_is_refused_for_good(
    session: aiohttp.ClientSession, emulator: EmulatorProcess
) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0})
    emulator.add_group(GROUP, [server(ip(i)) for i in range(999)])
    client = alb_client(session, emulator, retry=FAST_RETRY)
    last = await client.add_servers(GROUP, NEW[:1], "tok-full-1")
    assert last.outcome == "accepted" and last.job_id
    assert await wait_done(client, last.job_id) == "Succeeded"
    with pytest.raises(AlbError) as raised:
        await client.add_servers(GROUP, NEW[1:2], "tok-full-2")
    assert raised.value.code == "QuotaExceeded.ServersNum" and not raised.value.retryable
    assert [r["code"] for r in emulator.requests("AddServersToServerGroup")] == ["OK", "QuotaExceeded.ServersNum"]
    assert "1,000 servers" in advice(raised.value, GROUP, "AddServersToServerGroup")
    assert len(await client.listed_servers(GROUP)) == 1000


async def test_add_dry_run_passes_and_changes_nothing(client: AlbClient, emulator: EmulatorProcess) -> None:
    dry = await client.add_servers(GROUP, NEW, "tok-add-dry", weights=10, dry_run=True)
    assert dry.outcome == "dry_run_passed" and dry.job_id is None
    there = await client.add_servers(GROUP, [Server("Ip", ip(0), 8080)], "tok-add-dry2", dry_run=True)
    assert there.outcome == "already_added"
    assert emulator.admin("GET", "jobs") == [] and len(members(emulator)) == 141


@pytest.mark.parametrize("bad", [-1, "2", True])
def test_add_job_seconds_must_be_null_or_seconds(emulator: EmulatorProcess, bad: object) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        emulator.admin("PUT", "behaviour", {"add_job_seconds": bad})
    assert refused.value.code == 400 and "add_job_seconds" in refused.value.read().decode()
    assert emulator.admin("GET", "behaviour")["add_job_seconds"] is None


async def test_a_failed_add_job_leaves_no_server_behind(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0.3, "job_failure_rate": 1.0})
    added = await client.add_servers(GROUP, NEW[:1], "tok-add-fail")
    assert added.job_id and (await client.listed_servers(GROUP, NEW[:1]))[NEW[0]].status == "Adding"
    assert await wait_done(client, added.job_id) == "Failed"
    assert await client.listed_servers(GROUP, NEW[:1]) == {}
