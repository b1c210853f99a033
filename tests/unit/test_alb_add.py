"""Adding servers: the answer each outcome maps to, the weights on the wire, listed servers, and the refusals no
retry gets past (with what a person is told)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from alb_membership.alb import signing
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, StaticCredentials
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.errors import AlbError, from_response, is_retryable
from alb_membership.alb.models import AddAnswer, ListedServer, RemoveAnswer, Server
from alb_membership.alb.retry import RetryPolicy
from alb_membership.model.health import advice

GROUP = "sgp-unit0000000001"
A = Server("Ip", "10.0.0.1", 8080)
B = Server("Ip", "10.0.0.2", 8080)
ENI = Server("Eni", "eni-bp1abc", 80, "10.0.0.9")


@dataclass
class Seen:
    action: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class FakeAlb:
    """A loopback HTTP server that records each request and answers with the next scripted (status, body)."""

    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(
                request.headers["x-acs-action"],
                dict(parse_qsl(request.query_string, keep_blank_values=True)),
                await request.read(),
                {k.lower(): v for k, v in request.headers.items()},
            )
        )
        status, body = self.answers.pop(0) if self.answers else (200, {"JobId": "job-1"})
        return web.json_response({"RequestId": f"R-{len(self.seen)}", **body}, status=status)


@pytest.fixture
async def alb() -> AsyncIterator[tuple[FakeAlb, AlbClient]]:
    fake = FakeAlb()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        client = AlbClient(
            session,
            Endpoint.from_url(str(server.make_url("")).rstrip("/")),
            StaticCredentials(Credentials("AKID", "secret")),
            retry=RetryPolicy(base_seconds=0.001, cap_seconds=0.01, total_seconds=1),
        )
        yield fake, client
    await server.close()


def refusal(code: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {"Code": code, "Message": f"{code} said the cloud"}


# -- the wire --------------------------------------------------------------------------------------------------


async def test_servers_go_in_the_form_body_each_with_its_weight(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    answer = await client.add_servers(
        GROUP, [A, B, ENI], "tok-1", weights={A: 0, B: 100, ENI: 37, Server("Ip", "x", 1): 5}
    )
    assert answer == AddAnswer("accepted", request_id="R-1", job_id="job-1")
    (seen,) = fake.seen
    assert seen.action == "AddServersToServerGroup"
    assert seen.query == {"ClientToken": "tok-1", "ServerGroupId": GROUP}, "no server in the query, no DryRun"
    assert seen.form == {
        "Servers.1.Port": "8080",
        "Servers.1.ServerId": "10.0.0.1",
        "Servers.1.ServerType": "Ip",
        "Servers.1.Weight": "0",  # sent, as the SDK sends Weight=0: no traffic, not the default 100
        "Servers.2.Port": "8080",
        "Servers.2.ServerId": "10.0.0.2",
        "Servers.2.ServerType": "Ip",
        "Servers.2.Weight": "100",
        "Servers.3.Port": "80",
        "Servers.3.ServerId": "eni-bp1abc",
        "Servers.3.ServerIp": "10.0.0.9",
        "Servers.3.ServerType": "Eni",
        "Servers.3.Weight": "37",
    }
    # The SDK's form body: keys sorted, URL-encoded; the signed hash is that body's.
    assert seen.body.decode().split("&") == sorted(seen.body.decode().split("&"))
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen.headers["x-acs-content-sha256"] == signing.payload_hash(seen.body)


async def test_one_weight_for_all_and_the_default_of_100(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    await client.add_servers(GROUP, [A, B], "tok-1", weights=20)
    await client.add_servers(GROUP, [A], "tok-2")
    assert [v for k, v in fake.seen[0].form.items() if k.endswith(".Weight")] == ["20", "20"]
    assert fake.seen[1].form["Servers.1.Weight"] == "100"


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({A: 10}, r"no weight given for Ip/10\.0\.0\.2:8080"),
        (101, "not a whole number from 0 to 100"),
        (-1, "not a whole number from 0 to 100"),
        (True, "not a whole number from 0 to 100"),
        (2.5, "not a whole number from 0 to 100"),
        ({A: 10, B: "50"}, r"'50' for Ip/10\.0\.0\.2:8080"),
    ],
)
async def test_a_weight_the_api_would_refuse_is_refused_before_sending(
    alb: tuple[FakeAlb, AlbClient], weights: Any, message: str
) -> None:
    fake, client = alb
    with pytest.raises(ValueError, match=message):
        await client.add_servers(GROUP, [A, B], "tok-1", weights=weights)
    assert fake.seen == []


async def test_removal_keeps_its_servers_in_the_query(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    assert await client.remove_servers(GROUP, [A], "tok-r") == RemoveAnswer("accepted", "R-1", "job-1")
    (seen,) = fake.seen
    assert seen.body == b"" and seen.query["Servers.1.ServerId"] == "10.0.0.1" and "Servers.1.Weight" not in seen.query


# -- the answers -----------------------------------------------------------------------------------------------


async def test_already_added_is_an_answer_not_an_error(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    fake.answers = [refusal("ResourceAlreadyAssociated.BackendServer")]
    assert await client.add_servers(GROUP, [A, B], "tok-1") == AddAnswer("already_added", request_id="R-1")
    assert len(fake.seen) == 1, "not retried"


async def test_dry_run(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    fake.answers = [refusal("DryRunOperation"), refusal("ResourceAlreadyAssociated.BackendServer")]
    assert await client.add_servers(GROUP, [A], "tok-1", dry_run=True) == AddAnswer("dry_run_passed", "R-1")
    assert fake.seen[0].query["DryRun"] == "true"
    # A precheck that finds a server there already says so, as the call would.
    assert (await client.add_servers(GROUP, [A], "tok-1", dry_run=True)).outcome == "already_added"


async def test_dry_run_operation_without_dry_run_is_an_error(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    fake.answers = [refusal("DryRunOperation")]
    with pytest.raises(AlbError, match="DryRunOperation"):
        await client.add_servers(GROUP, [A], "tok-1")


async def test_each_action_has_its_own_nothing_to_do(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    fake.answers = [refusal("ResourceNotFound.BackendServer", 404), refusal("ResourceAlreadyAssociated.BackendServer")]
    with pytest.raises(AlbError, match=r"ResourceNotFound\.BackendServer"):
        await client.add_servers(GROUP, [A], "tok-1")
    with pytest.raises(AlbError, match=r"ResourceAlreadyAssociated\.BackendServer"):
        await client.remove_servers(GROUP, [A], "tok-2")
    fake.answers = [refusal("ResourceNotFound.BackendServer", 404)]
    assert (await client.remove_servers(GROUP, [A], "tok-3")).outcome == "already_removed"


async def test_an_answer_without_a_job_id_is_not_taken(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    fake.answers = [(200, {})] * 3
    with pytest.raises(AlbError, match="no JobId"):
        await client.add_servers(GROUP, [A], "tok-1")


@pytest.mark.parametrize("status", [400, 500, 503])
@pytest.mark.parametrize("code", ["QuotaExceeded.ServersNum", "Mismatch.ServerType", "IllegalParam.Weight"])
async def test_refusals_no_retry_gets_past_are_sent_once(
    alb: tuple[FakeAlb, AlbClient], code: str, status: int
) -> None:
    fake, client = alb
    fake.answers = [refusal(code, status)] * 5
    with pytest.raises(AlbError) as raised:
        await client.add_servers(GROUP, [A], "tok-1")
    assert (raised.value.code, raised.value.retryable, len(fake.seen)) == (code, False, 1)
    assert not is_retryable(code, status)


# -- what a person is told -------------------------------------------------------------------------------------


def refused(code: str, status: int = 400) -> AlbError:
    return from_response(status, {"Code": code, "Message": "m", "RequestId": "R"}, {})


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (
            "QuotaExceeded.ServersNum",
            ["1,000 servers", GROUP, "remove servers it no longer needs", "more server groups"],
        ),
        ("Mismatch.ServerType", [GROUP, "does not take servers of this type", "spec.backend.serverType"]),
        ("IllegalParam.Weight", ["weight", "from 0 to 100"]),
    ],
)
def test_advice_a_person_can_act_on(code: str, says: list[str]) -> None:
    text = advice(refused(code), GROUP, "AddServersToServerGroup")
    for part in says:
        assert part in text
    assert "retries" not in text


def test_advice_names_the_action() -> None:
    assert advice(refused("Forbidden.NoPermission", 403), GROUP, "AddServersToServerGroup").endswith(
        "grant alb:AddServersToServerGroup"
    )
    assert advice(refused("Forbidden.NoPermission", 403), GROUP).endswith("grant alb:RemoveServersFromServerGroup")
    assert advice(refused("Whatever"), GROUP, "AddServersToServerGroup").startswith("the cloud refused the addition")
    assert advice(refused("Whatever"), GROUP) == (
        "the cloud refused the removal; fix the cause named here, the operator retries every minute"
    )


# -- listed servers --------------------------------------------------------------------------------------------


def listed(server: Server, status: str = "Available", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ServerGroupId": GROUP, "ServerType": server.server_type, "ServerId": server.server_id}
    out.update({"Port": server.port, "ServerIp": server.server_ip or server.server_id, "Status": status})
    return {**out, **extra}


@pytest.mark.parametrize(
    ("raw", "status", "weight"),
    [
        (listed(A, "Adding", Weight=0), "Adding", 0),
        (listed(A, "Available", Weight=100), "Available", 100),
        (listed(A, "Configuring", Weight="35"), "Configuring", 35),  # a string that reads as a whole number
        (listed(A, "Removing"), "Removing", None),  # no Weight (an Fc server has none)
        (listed(A, "Draining", Weight=True), "Draining", None),
        ({k: v for k, v in listed(A, Weight=1.5).items() if k != "Status"}, "", None),
    ],
)
def test_listed_server_from_the_api(raw: dict[str, Any], status: str, weight: int | None) -> None:
    assert ListedServer.from_api(raw) == ListedServer(A, status, weight)
    assert ListedServer.from_api(raw).in_rotation == (status != "Draining")


def test_in_rotation_is_what_it_was() -> None:
    answer = [listed(A, "Draining"), listed(B, "Removing"), listed(ENI, "Adding")]
    assert Server.in_rotation(answer) == {B, ENI}


async def test_listed_servers_of_the_group_or_of_some_servers(alb: tuple[FakeAlb, AlbClient]) -> None:
    fake, client = alb
    other_port = Server("Ip", "10.0.0.1", 9090)
    page = [listed(A, "Available", Weight=100), listed(other_port, "Adding", Weight=0), listed(B, "Draining", Weight=5)]
    fake.answers = [(200, {"Servers": page, "TotalCount": 3, "NextToken": ""})] * 2
    everything = await client.listed_servers(GROUP)
    assert everything == {
        A: ListedServer(A, "Available", 100),
        other_port: ListedServer(other_port, "Adding", 0),
        B: ListedServer(B, "Draining", 5),
    }
    assert "ServerIds.1" not in fake.seen[0].query
    # Asked about A and ENI: read by their ServerIds; the other port of A's IP is not asked about, ENI is not there.
    assert await client.listed_servers(GROUP, [A, ENI]) == {A: ListedServer(A, "Available", 100)}
    assert {v for k, v in fake.seen[1].query.items() if k.startswith("ServerIds.")} == {"10.0.0.1", "eni-bp1abc"}
