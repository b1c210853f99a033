"""Pure logic of the ALB client: tokens, batching, flattening, server specs, error mapping, endpoints, limits."""

from __future__ import annotations

import asyncio
import time

import pytest

from alb_membership.alb.batching import batches, client_token
from alb_membership.alb.credentials import Credentials
from alb_membership.alb.endpoints import Endpoint, resolve
from alb_membership.alb.errors import AlbError, AlbThrottled, from_response, is_retryable
from alb_membership.alb.models import Server
from alb_membership.alb.ratelimit import SlidingWindowLimiter
from alb_membership.alb.request import flatten
from alb_membership.alb.retry import RetryPolicy, with_retries


def ips(n: int) -> list[Server]:
    return [Server("Ip", f"10.0.{i // 250}.{i % 250}", 80) for i in range(n)]


def test_tokens_are_deterministic_ascii_and_at_most_64() -> None:
    token = client_token("sgm-uid/pod-uid", ips(3))
    assert token == client_token("sgm-uid/pod-uid", list(reversed(ips(3))))
    assert len(token) == 64 and token.isascii()
    assert token != client_token("sgm-uid/other-pod-uid", ips(3)), "a new pod UID must never reuse a token"
    assert token != client_token("sgm-uid/pod-uid", ips(2))


def test_batches_split_at_the_size_with_distinct_tokens() -> None:
    parts = batches(ips(100), seed="s")
    assert [len(b.servers) for b in parts] == [40, 40, 20]
    assert len({b.client_token for b in parts}) == 3
    assert parts == batches(list(reversed(ips(100))), seed="s")
    assert [len(b.servers) for b in batches(ips(450), seed="s", size=200)] == [200, 200, 50]
    assert batches(ips(2) + ips(2), seed="s")[0].servers == tuple(ips(2)), "duplicates go out once"


@pytest.mark.parametrize("size", [0, 201])
def test_batch_size_bounds(size: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 200"):
        batches(ips(1), seed="s", size=size)


def test_flatten_numbers_from_one() -> None:
    assert flatten(
        "Servers", [Server("Ip", "10.0.0.1", 80).to_api(), Server("Eni", "eni-1", 80, "10.0.0.2").to_api()]
    ) == {
        "Servers.1.ServerId": "10.0.0.1",
        "Servers.1.ServerType": "Ip",
        "Servers.1.Port": "80",
        "Servers.2.ServerId": "eni-1",
        "Servers.2.ServerType": "Eni",
        "Servers.2.Port": "80",
        "Servers.2.ServerIp": "10.0.0.2",
    }
    assert flatten("JobIds", ["a", "b"]) == {"JobIds.1": "a", "JobIds.2": "b"}


@pytest.mark.parametrize(
    ("spec", "server"),
    [
        ("Ip:10.0.0.5:8080", Server("Ip", "10.0.0.5", 8080)),
        ("Eni:eni-bp1abc:80:10.0.0.5", Server("Eni", "eni-bp1abc", 80, "10.0.0.5")),
        ("Ecs:i-bp67acfmxazb4p1234:80", Server("Ecs", "i-bp67acfmxazb4p1234", 80)),
        ("Ip:[fd00::5]:8080", Server("Ip", "fd00::5", 8080)),
        ("Eni:eni-bp1abc:80:[fd00::5]", Server("Eni", "eni-bp1abc", 80, "fd00::5")),
    ],
)
def test_server_specs(spec: str, server: Server) -> None:
    assert Server.parse(spec) == server
    assert server.compact == spec, "compact is the form parse reads"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("Ip:10.0.0.5", "TYPE:ID:PORT"),
        ("Vm:x:80", "not one of"),
        ("Ip:10.0.0.5:http", "not a number"),
        ("Ip:10.0.0.5:0", "between 1 and 65535"),
        ("Ecs:i-1:", "needs a port"),
        ("Ip:[fd00::5:8080", "TYPE:ID:PORT"),
        ("Ip:[fd00::5]x:8080", "TYPE:ID:PORT"),
    ],
)
def test_bad_server_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Server.parse(spec)


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("IncorrectStatus.ServerGroup", 400, True),
        ("Throttling.User", 400, True),
        ("Throttling", 400, True),
        ("SystemBusy", 400, True),
        ("IdempotenceProcessing", 400, True),
        ("ServiceUnavailable", 503, True),
        ("Anything", 502, True),
        ("ResourceNotFound.ServerGroup", 404, False),
        ("Forbidden.NoPermission", 403, False),
        ("IllegalParam.Port", 400, False),
        ("IdempotenceSignatureMismatch", 400, False),
        ("QuotaExceeded.ServersNum", 400, False),
        ("QuotaExceeded.ServersNum", 500, False),  # final whatever the status: the group is full
        ("Mismatch.ServerType", 400, False),
        ("IllegalParam.Weight", 400, False),
    ],
)
def test_error_mapping(code: str, status: int, retryable: bool) -> None:
    err = from_response(status, {"Code": code, "Message": "m", "RequestId": "R-1"}, {})
    assert (err.code, err.http_status, err.request_id, err.retryable) == (code, status, "R-1", retryable)
    assert is_retryable(code, status) == retryable
    assert isinstance(err, AlbThrottled) == code.startswith("Throttling")


def test_retry_after_header_is_milliseconds() -> None:
    err = from_response(400, {"Code": "Throttling.User"}, {"x-acs-retry-after": "1500"})
    assert err.retry_after == 1.5
    assert from_response(500, "not json", {"x-acs-request-id": "R"}).request_id == "R"


def test_credentials_never_show_secrets() -> None:
    creds = Credentials("LTAIid", "top-secret", "sts-token-secret")
    assert "top-secret" not in repr(creds) and "sts-token-secret" not in repr(creds)


def test_endpoints() -> None:
    assert resolve("cn-hangzhou", None) == Endpoint(
        "https://alb.cn-hangzhou.aliyuncs.com", "alb.cn-hangzhou.aliyuncs.com"
    )
    assert resolve("cn-shanghai", None, vpc=True).host == "alb-vpc.cn-shanghai.aliyuncs.com"
    assert resolve("cn-hangzhou", "http://127.0.0.1:8080") == Endpoint("http://127.0.0.1:8080", "127.0.0.1:8080")
    for bad in ("127.0.0.1:8080", "ftp://x", "http://x/path"):
        with pytest.raises(ValueError, match="http"):
            Endpoint.from_url(bad)
    with pytest.raises(ValueError, match="region"):
        resolve("Hangzhou!", None)
    with pytest.raises(ValueError, match="give a region"):
        resolve(None, None)


async def test_sliding_window_never_exceeds_the_quota() -> None:
    limiter = SlidingWindowLimiter(calls=3, period=0.3)
    stamps = []

    async def one() -> None:
        await limiter.acquire()
        stamps.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(8)))
    assert len(stamps) == 8
    for s in stamps:
        assert sum(1 for t in stamps if s <= t < s + 0.3) <= 3
    assert stamps[-1] - stamps[0] >= 0.6  # 8 calls at 3 per 0.3 s need at least two full windows


async def test_retries_wait_at_least_retry_after_and_stop_on_a_final_error() -> None:
    attempts: list[float] = []

    async def throttled_then_ok() -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise AlbThrottled("Throttling.User", "slow down", http_status=400, retry_after=0.3)
        return "ok"

    assert await with_retries(RetryPolicy(base_seconds=0.001, cap_seconds=0.01), throttled_then_ok) == "ok"
    assert attempts[1] - attempts[0] >= 0.3

    calls = 0

    async def final() -> str:
        nonlocal calls
        calls += 1
        raise AlbError("ResourceNotFound.ServerGroup", "gone", http_status=404)

    with pytest.raises(AlbError, match="ResourceNotFound"):
        await with_retries(RetryPolicy(), final)
    assert calls == 1
