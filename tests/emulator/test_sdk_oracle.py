"""The official Alibaba Cloud SDK (alibabacloud-alb20200616) cannot tell the emulator from the service.

Every operation is driven through the SDK with both signature versions and with STS credentials, and every
error path must surface as the SDK exception carrying the expected ``code`` and HTTP status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import threading
import time
import urllib.error
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import web
from alibabacloud_alb20200616 import models as alb
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException, ThrottlingException
from darabonba.exceptions import UnretryableException

from alb_membership.alb import signing
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, StaticCredentials
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.models import AddAnswer, Server
from tests.support.emulator import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    STS_KEY_ID,
    STS_SECRET,
    STS_TOKEN,
    EmulatorProcess,
    server,
)

GROUP = "sgp-oracle00000001"


def sdk(
    emulator: EmulatorProcess,
    key: str = ACCESS_KEY_ID,
    secret: str = ACCESS_KEY_SECRET,
    token: str | None = None,
    v2: bool = False,
) -> Client:
    config = open_api_models.Config(
        access_key_id=key,
        access_key_secret=secret,
        security_token=token,
        endpoint=emulator.endpoint,
        protocol="http",
        read_timeout=10000,
        connect_timeout=5000,
    )
    if v2:
        config.signature_algorithm = "v2"
    return Client(config)


def remove_request(
    *ids: str, group: str = GROUP, port: int = 8080, **kw: Any
) -> alb.RemoveServersFromServerGroupRequest:
    return alb.RemoveServersFromServerGroupRequest(
        server_group_id=group,
        servers=[alb.RemoveServersFromServerGroupRequestServers(server_id=i, server_type="Ip", port=port) for i in ids],
        **kw,
    )


def wait_job(client: Client, job_id: str, timeout: float = 10) -> alb.ListAsynJobsResponseBodyJobs:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.list_asyn_jobs(alb.ListAsynJobsRequest(job_ids=[job_id])).body.jobs
        assert len(jobs) == 1
        if jobs[0].status != "Processing":
            return jobs[0]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still Processing after {timeout}s")


@pytest.fixture
def group(emulator: EmulatorProcess) -> str:
    emulator.add_group(GROUP, [server(f"10.0.0.{i}") for i in range(1, 6)])
    return GROUP


@pytest.mark.parametrize("v2", [False, True], ids=["ACS3", "RPC-HMAC-SHA1"])
def test_remove_servers_runs_a_job_to_success(emulator: EmulatorProcess, group: str, v2: bool) -> None:
    client = sdk(emulator, v2=v2)
    resp = client.remove_servers_from_server_group(remove_request("10.0.0.1", "10.0.0.2", client_token="t-1"))
    assert resp.status_code == 200
    assert resp.body.job_id and resp.body.request_id

    during = emulator.group(group)
    assert during["ServerGroupStatus"] == "Configuring"
    statuses = {s["ServerId"]: s["Status"] for s in during["Servers"]}
    assert statuses["10.0.0.1"] == statuses["10.0.0.2"] == "Removing"
    assert statuses["10.0.0.3"] == "Available"

    job = wait_job(client, resp.body.job_id)
    assert job.status == "Succeeded"
    assert job.api_name == "RemoveServersFromServerGroup"
    assert job.resource_id == group
    after = emulator.group(group)
    assert after["ServerGroupStatus"] == "Available"
    assert {s["ServerId"] for s in after["Servers"]} == {"10.0.0.3", "10.0.0.4", "10.0.0.5"}
    assert emulator.requests("RemoveServersFromServerGroup")[-1]["signature"] == ("RPC" if v2 else "ACS3")


def test_sts_credentials_are_accepted_and_checked(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator, key=STS_KEY_ID, secret=STS_SECRET, token=STS_TOKEN)
    resp = client.list_server_group_servers(alb.ListServerGroupServersRequest(server_group_id=group))
    assert resp.body.total_count == 5
    assert (
        sdk(emulator, key=STS_KEY_ID, secret=STS_SECRET, token=STS_TOKEN, v2=True)
        .list_server_groups(alb.ListServerGroupsRequest())
        .body.total_count
        == 1
    )
    with pytest.raises(ClientException) as refused:
        sdk(emulator, key=STS_KEY_ID, secret=STS_SECRET, token="CAIS-other").list_server_groups(
            alb.ListServerGroupsRequest()
        )
    assert refused.value.code == "InvalidSecurityToken.Mismatch"


@pytest.mark.parametrize("v2", [False, True], ids=["ACS3", "RPC-HMAC-SHA1"])
def test_add_servers_sends_servers_in_the_body(emulator: EmulatorProcess, group: str, v2: bool) -> None:
    client = sdk(emulator, v2=v2)
    resp = client.add_servers_to_server_group(
        alb.AddServersToServerGroupRequest(
            server_group_id=group,
            dry_run=False,
            servers=[
                alb.AddServersToServerGroupRequestServers(
                    server_id="10.0.1.1", server_type="Ip", port=9090, weight=0, description="new one"
                )
            ],
        )
    )
    assert wait_job(client, resp.body.job_id).status == "Succeeded"
    added = [s for s in emulator.group(group)["Servers"] if s["ServerId"] == "10.0.1.1"]
    assert added == [{**added[0], "Port": 9090, "Weight": 0, "Description": "new one", "Status": "Available"}]


def add_request(weights: dict[str, int], group: str = GROUP, **kw: Any) -> alb.AddServersToServerGroupRequest:
    return alb.AddServersToServerGroupRequest(
        server_group_id=group,
        servers=[
            alb.AddServersToServerGroupRequestServers(server_id=i, server_type="Ip", port=8080, weight=w)
            for i, w in weights.items()
        ],
        **kw,
    )


WEIGHTS = {"10.0.3.1": 0, "10.0.3.2": 55, "10.0.3.3": 100}


@pytest.mark.parametrize("v2", [False, True], ids=["ACS3", "RPC-HMAC-SHA1"])
def test_add_servers_with_weights_adding_then_available(emulator: EmulatorProcess, group: str, v2: bool) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 1.0})
    client = sdk(emulator, v2=v2)
    resp = client.add_servers_to_server_group(add_request(WEIGHTS, client_token="t-add"))
    listed = client.list_server_group_servers(alb.ListServerGroupServersRequest(server_group_id=group)).body.servers
    assert {s.server_id: (s.status, s.weight) for s in listed if s.server_id in WEIGHTS} == {
        i: ("Adding", w) for i, w in WEIGHTS.items()
    }
    assert wait_job(client, resp.body.job_id).status == "Succeeded"
    listed = client.list_server_group_servers(alb.ListServerGroupServersRequest(server_group_id=group)).body.servers
    assert {s.server_id: (s.status, s.weight) for s in listed if s.server_id in WEIGHTS} == {
        i: ("Available", w) for i, w in WEIGHTS.items()
    }
    (record,) = emulator.admin("GET", "tokens")  # the request's parameters, as the emulator read them
    assert [s["Weight"] for s in record["params"]["Servers"]] == ["0", "55", "100"]


def test_add_refusals(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator)
    expect(
        "ResourceAlreadyAssociated.BackendServer",
        400,
        lambda: client.add_servers_to_server_group(add_request({"10.0.9.9": 100, "10.0.0.1": 100})),
    )
    expect("IllegalParam.Weight", 400, lambda: client.add_servers_to_server_group(add_request({"10.0.9.9": 101})))
    expect("IllegalParam.Weight", 400, lambda: client.add_servers_to_server_group(add_request({"10.0.9.9": -1})))
    expect(
        "Mismatch.ServerType",
        400,
        lambda: client.add_servers_to_server_group(
            alb.AddServersToServerGroupRequest(
                server_group_id=group,
                servers=[alb.AddServersToServerGroupRequestServers(server_id="i-1", server_type="Ecs", port=80)],
            )
        ),
    )
    assert emulator.admin("GET", "jobs") == [] and len(emulator.group(group)["Servers"]) == 5


class Capture(http.server.BaseHTTPRequestHandler):
    """Records one request as it arrived and answers as the cloud does to a job's start."""

    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        answer = json.dumps({"RequestId": "R-capture", "JobId": "job-capture"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        pass


def test_the_operator_sends_and_signs_an_add_as_the_sdk_does(emulator: EmulatorProcess, group: str) -> None:
    """What the SDK sends for AddServersToServerGroup with weights, captured off the wire: ClientToken and
    ServerGroupId in the query, each server with its Weight in the form body (keys sorted). The operator's client
    sends the same query and the same body bytes; the project's signer gives the SDK's signature for the SDK's own
    request; and the emulator takes the SDK's request."""
    Capture.seen = []
    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=capture.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"127.0.0.1:{capture.server_address[1]}"
        ours = Server("Ip", "10.0.3.1", 8080), Server("Ip", "10.0.3.2", 8080), Server("Ip", "10.0.3.3", 8080)
        weights = dict(zip(ours, WEIGHTS.values(), strict=True))
        request = add_request(WEIGHTS, client_token="tok-weights")
        config = open_api_models.Config(
            access_key_id=ACCESS_KEY_ID, access_key_secret=ACCESS_KEY_SECRET, endpoint=endpoint, protocol="http"
        )
        assert Client(config).add_servers_to_server_group(request).body.job_id == "job-capture"

        async def operator_add() -> AddAnswer:
            async with aiohttp.ClientSession() as session:
                client = AlbClient(
                    session,
                    Endpoint.from_url(f"http://{endpoint}"),
                    StaticCredentials(Credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET)),
                )
                return await client.add_servers(GROUP, ours, "tok-weights", weights=weights)

        assert asyncio.run(operator_add()) == AddAnswer("accepted", "R-capture", "job-capture")
    finally:
        capture.shutdown()
        capture.server_close()
    (sdk_path, sdk_headers, sdk_body), (our_path, our_headers, our_body) = Capture.seen
    sdk_query = dict(parse_qsl(urlsplit(sdk_path).query, keep_blank_values=True))
    assert sdk_query == {"ClientToken": "tok-weights", "ServerGroupId": GROUP}
    assert sdk_body.decode() == (
        "Servers.1.Port=8080&Servers.1.ServerId=10.0.3.1&Servers.1.ServerType=Ip&Servers.1.Weight=0"
        "&Servers.2.Port=8080&Servers.2.ServerId=10.0.3.2&Servers.2.ServerType=Ip&Servers.2.Weight=55"
        "&Servers.3.Port=8080&Servers.3.ServerId=10.0.3.3&Servers.3.ServerType=Ip&Servers.3.Weight=100"
    )
    assert dict(parse_qsl(urlsplit(our_path).query, keep_blank_values=True)) == sdk_query
    assert our_body == sdk_body
    for name in ("content-type", "x-acs-action", "x-acs-version", "x-acs-content-sha256", "host"):
        assert our_headers[name] == sdk_headers[name], name

    parsed = signing.parse_authorization(sdk_headers["authorization"])
    assert sdk_headers["x-acs-content-sha256"] == signing.payload_hash(sdk_body)
    assert (
        signing.authorization(
            ACCESS_KEY_ID,
            ACCESS_KEY_SECRET,
            "POST",
            "/",
            sdk_query,
            {name: sdk_headers[name] for name in parsed.signed_headers},
            signing.payload_hash(sdk_body),
        )
        == sdk_headers["authorization"]
    )

    # The same SDK request, sent to the emulator, is taken: the servers join with their weights.
    client = sdk(emulator)
    assert wait_job(client, client.add_servers_to_server_group(request).body.job_id).status == "Succeeded"
    joined = {s["ServerId"]: s["Weight"] for s in emulator.group(group)["Servers"] if s["ServerId"] in WEIGHTS}
    assert joined == WEIGHTS


def test_replace_servers_is_one_atomic_job(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator)
    resp = client.replace_servers_in_server_group(
        alb.ReplaceServersInServerGroupRequest(
            server_group_id=group,
            removed_servers=[
                alb.ReplaceServersInServerGroupRequestRemovedServers(server_id="10.0.0.1", server_type="Ip", port=8080)
            ],
            added_servers=[
                alb.ReplaceServersInServerGroupRequestAddedServers(server_id="10.0.2.1", server_type="Ip", port=8080)
            ],
        )
    )
    assert wait_job(client, resp.body.job_id).status == "Succeeded"
    ids = {s["ServerId"] for s in emulator.group(group)["Servers"]}
    assert "10.0.0.1" not in ids and "10.0.2.1" in ids and len(ids) == 5


def test_list_server_group_servers_pages(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        body = client.list_server_group_servers(
            alb.ListServerGroupServersRequest(server_group_id=group, max_results=2, next_token=token)
        ).body
        pages += 1
        assert body.total_count == 5
        seen += [s.server_id for s in body.servers]
        assert all(s.status == "Available" and s.port == 8080 and s.server_type == "Ip" for s in body.servers)
        token = body.next_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == [f"10.0.0.{i}" for i in range(1, 6)]


def test_list_server_groups_filters_by_id(emulator: EmulatorProcess, group: str) -> None:
    emulator.add_group("sgp-other000000001", [])
    client = sdk(emulator)
    body = client.list_server_groups(alb.ListServerGroupsRequest(server_group_ids=[group])).body
    assert [g.server_group_id for g in body.server_groups] == [group]
    assert body.server_groups[0].server_count == 5
    assert body.server_groups[0].server_group_status == "Available"
    assert (
        client.list_server_groups(alb.ListServerGroupsRequest(server_group_ids=["sgp-nope"])).body.server_groups == []
    )


def test_list_asyn_jobs_by_many_job_ids(emulator: EmulatorProcess, group: str) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0})
    client = sdk(emulator)
    job_ids = [client.remove_servers_from_server_group(remove_request(f"10.0.0.{i}")).body.job_id for i in (1, 2, 3)]
    jobs = client.list_asyn_jobs(alb.ListAsynJobsRequest(job_ids=job_ids)).body.jobs
    assert {j.id for j in jobs} == set(job_ids)
    assert all(j.status == "Succeeded" and j.create_time > 0 for j in jobs)
    with pytest.raises(ClientException) as too_many:
        client.list_asyn_jobs(alb.ListAsynJobsRequest(job_ids=[f"j{i}" for i in range(21)]))
    assert too_many.value.code == "IllegalParam.JobIds"


# -- error paths ---------------------------------------------------------------------------------------------


def expect(code: str, status: int, call: Any, exc_type: type[Exception] = ClientException) -> Any:
    with pytest.raises(exc_type) as raised:
        call()
    assert raised.value.code == code, raised.value.message
    assert raised.value.status_code == status
    assert raised.value.request_id
    return raised.value


def test_concurrent_change_is_incorrect_status(emulator: EmulatorProcess, group: str) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 5})
    client = sdk(emulator)
    client.remove_servers_from_server_group(remove_request("10.0.0.1"))
    expect(
        "IncorrectStatus.ServerGroup", 400, lambda: client.remove_servers_from_server_group(remove_request("10.0.0.2"))
    )


def test_unknown_group_and_unknown_server(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator)
    expect(
        "ResourceNotFound.ServerGroup",
        404,
        lambda: client.remove_servers_from_server_group(remove_request("10.0.0.1", group="sgp-missing")),
    )
    expect(
        "ResourceNotFound.BackendServer",
        404,
        lambda: client.remove_servers_from_server_group(remove_request("10.9.9.9")),
    )
    expect(
        "ResourceNotFound.BackendServer",
        404,
        lambda: client.remove_servers_from_server_group(remove_request("10.0.0.1", port=9999)),
    )


def test_per_call_limit_is_40_by_default_and_configurable(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server(f"10.1.{i // 250}.{i % 250}") for i in range(60)])
    client = sdk(emulator)
    ids = [f"10.1.{i // 250}.{i % 250}" for i in range(41)]
    expect("IllegalParam.Servers", 400, lambda: client.remove_servers_from_server_group(remove_request(*ids)))
    emulator.admin("PUT", "behaviour", {"max_servers_per_call": 200})
    assert client.remove_servers_from_server_group(remove_request(*ids)).body.job_id


def test_group_limit_of_1000_servers(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server(f"10.2.{i // 250}.{i % 250}") for i in range(990)])
    client = sdk(emulator)
    servers = [
        alb.AddServersToServerGroupRequestServers(server_id=f"10.3.0.{i}", server_type="Ip", port=1) for i in range(20)
    ]
    expect(
        "QuotaExceeded.ServersNum",
        400,
        lambda: client.add_servers_to_server_group(
            alb.AddServersToServerGroupRequest(server_group_id=GROUP, servers=servers)
        ),
    )


@pytest.mark.parametrize(
    ("servers", "code"),
    [
        ([{"server_id": "10.0.0.1", "server_type": "Vm", "port": 80}], "IllegalParam.ServerType"),
        ([{"server_id": "10.0.0.1", "server_type": "Ip"}], "IllegalParam.Port"),
        ([{"server_id": "10.0.0.1", "server_type": "Ip", "port": 70000}], "IllegalParam.Port"),
        ([{"server_id": "10.0.0.1", "server_type": "Ip", "port": 0}], "IllegalParam.Port"),
        ([{"server_id": "i-1", "server_type": "Ecs"}], "IllegalParam.Port"),
        ([{"server_id": "i-1", "server_type": "Ecs", "port": 80}], "Mismatch.ServerType"),
        ([{"server_id": "10.0.0.1", "server_type": "Ip", "port": 8080}] * 2, "DuplicatedParam.Server"),
    ],
)
def test_parameter_validation(emulator: EmulatorProcess, group: str, servers: list[dict[str, Any]], code: str) -> None:
    request = alb.RemoveServersFromServerGroupRequest(
        server_group_id=group, servers=[alb.RemoveServersFromServerGroupRequestServers(**s) for s in servers]
    )
    expect(code, 400, lambda: sdk(emulator).remove_servers_from_server_group(request))


@pytest.mark.parametrize("token", ["x" * 65, "tökén"])
def test_client_token_must_be_ascii_and_at_most_64(emulator: EmulatorProcess, group: str, token: str) -> None:
    expect(
        "IllegalParam.ClientToken",
        400,
        lambda: sdk(emulator).remove_servers_from_server_group(remove_request("10.0.0.1", client_token=token)),
    )


def test_dry_run_prechecks_and_changes_nothing(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator)
    expect(
        "DryRunOperation",
        400,
        lambda: client.remove_servers_from_server_group(remove_request("10.0.0.1", dry_run=True)),
    )
    expect(
        "ResourceNotFound.BackendServer",
        404,
        lambda: client.remove_servers_from_server_group(remove_request("10.7.7.7", dry_run=True)),
    )
    assert len(emulator.group(group)["Servers"]) == 5
    assert emulator.admin("GET", "jobs") == []


def test_client_token_idempotency(emulator: EmulatorProcess, group: str) -> None:
    client = sdk(emulator)
    first = client.remove_servers_from_server_group(remove_request("10.0.0.1", client_token="same-token"))
    again = client.remove_servers_from_server_group(remove_request("10.0.0.1", client_token="same-token"))
    assert again.body.job_id == first.body.job_id
    assert again.body.request_id != first.body.request_id
    assert len(emulator.admin("GET", "jobs")) == 1
    wait_job(client, first.body.job_id)
    # Still the same answer after the job finished: a late retry never removes twice.
    assert (
        client.remove_servers_from_server_group(remove_request("10.0.0.1", client_token="same-token")).body.job_id
        == first.body.job_id
    )
    expect(
        "IdempotenceSignatureMismatch",
        400,
        lambda: client.remove_servers_from_server_group(remove_request("10.0.0.2", client_token="same-token")),
    )
    # The admin API tells which token went with which servers, and that it was tried with others.
    (record,) = emulator.admin("GET", "tokens")
    assert (record["action"], record["token"], record["job_id"]) == (
        "RemoveServersFromServerGroup",
        "same-token",
        first.body.job_id,
    )
    assert [s["ServerId"] for s in record["params"]["Servers"]] == ["10.0.0.1"]
    assert [[s["ServerId"] for s in m["Servers"]] for m in record["mismatched"]] == [["10.0.0.2"]]


def test_same_token_while_processing(emulator: EmulatorProcess, group: str) -> None:
    emulator.admin("PUT", "faults", {"latency_ms": 800, "actions": ["RemoveServersFromServerGroup"]})
    client = sdk(emulator)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(client.remove_servers_from_server_group, remove_request("10.0.0.1", client_token="tok-p"))
        time.sleep(0.3)
        expect(
            "IdempotenceProcessing",
            400,
            lambda: client.remove_servers_from_server_group(remove_request("10.0.0.1", client_token="tok-p")),
        )
        assert slow.result().body.job_id


def test_flow_control_throttles(emulator: EmulatorProcess, group: str) -> None:
    emulator.admin("PUT", "behaviour", {"rate_limits": {"ListServerGroups": [3, 60]}})
    client = sdk(emulator)
    for _ in range(3):
        client.list_server_groups(alb.ListServerGroupsRequest())
    expect("Throttling.User", 400, lambda: client.list_server_groups(alb.ListServerGroupsRequest()))
    # With x-acs-retry-after the SDK raises its dedicated ThrottlingException.
    emulator.admin("PUT", "behaviour", {"retry_after_ms": 1500})
    throttled = expect(
        "Throttling.User", 400, lambda: client.list_server_groups(alb.ListServerGroupsRequest()), ThrottlingException
    )
    assert throttled.retry_after == 1500


def test_injected_server_errors(emulator: EmulatorProcess, group: str) -> None:
    emulator.admin(
        "PUT",
        "faults",
        {
            "script": [
                {"kind": "error", "code": "ServiceUnavailable"},
                {"kind": "error", "code": "InternalError"},
                {"kind": "error", "code": "SystemBusy"},
            ]
        },
    )
    client = sdk(emulator)
    call = lambda: client.list_server_groups(alb.ListServerGroupsRequest())  # noqa: E731
    expect("ServiceUnavailable", 503, call, ServerException)
    expect("InternalError", 500, call, ServerException)
    expect("SystemBusy", 400, call)
    assert client.list_server_groups(alb.ListServerGroupsRequest()).body.total_count == 1


def test_unknown_key_and_wrong_secret(emulator: EmulatorProcess, group: str) -> None:
    expect(
        "InvalidAccessKeyId.NotFound",
        404,
        lambda: sdk(emulator, key="LTAInobody").list_server_groups(alb.ListServerGroupsRequest()),
    )
    for v2 in (False, True):
        expect(
            "SignatureDoesNotMatch",
            400,
            lambda v2=v2: sdk(emulator, secret="wrong", v2=v2).list_server_groups(alb.ListServerGroupsRequest()),
        )


# -- the request line: what the SDK sends for 200 servers, and the knob that refuses long lines ----------------------

WIDE = [  # the longest server identities of each kind, port 65535: what makes the SDK's query longest
    ("Ip", lambda i: {"server_id": f"10.{100 + i // 250}.200.{i % 250}"}),
    ("Ip", lambda i: {"server_id": f"fd00:1234:5678:9abc:def0:1234:5678:{i:04x}"}),
    ("Eni", lambda i: {"server_id": f"eni-bp1{i:017d}", "server_ip": f"fd00:1234:5678:9abc:def0:1234:5678:{i:04x}"}),
]


def wide_request(server_type: str, shape: Any, n: int = 200) -> alb.RemoveServersFromServerGroupRequest:
    return alb.RemoveServersFromServerGroupRequest(
        server_group_id=GROUP,
        client_token="t" * 64,
        dry_run=False,
        servers=[
            alb.RemoveServersFromServerGroupRequestServers(server_type=server_type, port=65535, **shape(i))
            for i in range(n)
        ],
    )


@pytest.mark.parametrize("v2", [False, True], ids=["ACS3", "RPC-HMAC-SHA1"])
@pytest.mark.parametrize(("server_type", "shape"), WIDE, ids=["ipv4", "ipv6", "eni-ipv6"])
def test_the_sdks_200_server_removal_fits_the_default_request_line(
    emulator: EmulatorProcess, v2: bool, server_type: str, shape: Any
) -> None:
    """The API takes 200 servers a call and the SDK puts them in the query: the emulator takes the longest such
    call (aiohttp's default 8,190 bytes refused more than about 95)."""
    request = wide_request(server_type, shape)
    group_type = "Instance" if server_type == "Eni" else "Ip"
    members = [
        server(s.server_id, 65535, server_type, **({"server_ip": s.server_ip} if s.server_ip else {}))
        for s in request.servers
    ]
    emulator.add_group(GROUP, members, type_=group_type)
    emulator.admin("PUT", "behaviour", {"max_servers_per_call": 200})
    assert emulator.admin("GET", "behaviour")["max_request_line"] == 36 * 1024
    job_id = sdk(emulator, v2=v2).remove_servers_from_server_group(request).body.job_id
    assert job_id and wait_job(sdk(emulator), job_id).status == "Succeeded"
    assert emulator.group(GROUP)["Servers"] == []


def test_a_lower_max_request_line_refuses_as_aiohttp_does(emulator: EmulatorProcess) -> None:
    """The knob: a target longer than max_request_line gets aiohttp's own plain-text 400 (its words, the connection
    closed) before any handler runs; the SDK, like the operator, gets an answer that is not the API's JSON."""
    emulator.add_group(GROUP, [server(f"10.{100 + i // 250}.200.{i % 250}", 65535) for i in range(200)])
    emulator.admin("PUT", "behaviour", {"max_servers_per_call": 200, "max_request_line": 8190})
    short = wide_request(*WIDE[0], n=95)
    long = wide_request(*WIDE[0], n=110)
    with pytest.raises(UnretryableException, match=r"Failed to parse the value as json format.*Got more than 8190"):
        sdk(emulator).remove_servers_from_server_group(long)  # not the API's JSON: the SDK cannot read it
    (logged,) = [r for r in emulator.requests() if r["code"] == "LineTooLong"]
    assert logged["action"] == "RemoveServersFromServerGroup" and logged["request_line"] > 8190
    assert emulator.admin("GET", "jobs") == [], "refused before the handler: no job"
    assert sdk(emulator).remove_servers_from_server_group(short).body.job_id, "95 servers fit in 8,190 bytes"

    # Byte for byte what aiohttp itself answers at that limit.
    target = "/?" + "a" * 8200

    async def both() -> list[tuple[int, str, str, bool]]:
        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        plain = web.Application()
        plain.router.add_post("/", ok)
        runner = web.AppRunner(plain, max_line_size=8190)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        out = []
        try:
            for url in (f"http://127.0.0.1:{runner.addresses[0][1]}", emulator.url):
                async with aiohttp.ClientSession() as session, session.post(url + target) as resp:
                    closes = resp.headers.get("Connection", "").lower() == "close" or resp.version.minor == 0
                    out.append((resp.status, resp.content_type, await resp.text(), closes))
        finally:
            await runner.cleanup()
        return out

    aiohttp_says, emulator_says = asyncio.run(both())
    assert emulator_says == aiohttp_says
    assert aiohttp_says[:2] == (400, "text/plain") and aiohttp_says[2].startswith("Got more than 8190 bytes")
    emulator.admin("PUT", "behaviour", {"max_request_line": 36 * 1024})


@pytest.mark.parametrize("bad", [0, -1, 2 * 1024 * 1024, "8190", 1.5, True])
def test_max_request_line_must_be_a_byte_count(emulator: EmulatorProcess, bad: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        emulator.admin("PUT", "behaviour", {"max_request_line": bad})
    assert refused.value.code == 400 and "max_request_line" in refused.value.read().decode()
