"""Our ACS3 signer against the reference vector and against the official SDK's own signing function."""

from __future__ import annotations

import random
import string
from types import SimpleNamespace

import pytest
from alibabacloud_tea_openapi.utils import Utils as SdkUtils

from alb_membership.alb import signing

VECTOR_QUERY = {
    "ClientToken": "tok 1",
    "ServerGroupId": "sgp-abc",
    "Servers.1.Port": "80",
    "Servers.1.ServerId": "i-1",
    "Servers.1.ServerType": "Ecs",
}
VECTOR_HEADERS = {
    "accept": "application/json",
    "host": "alb.cn-hangzhou.aliyuncs.com",
    "x-acs-action": "RemoveServersFromServerGroup",
    "x-acs-content-sha256": signing.EMPTY_BODY_SHA256,
    "x-acs-date": "2024-01-01T00:00:00Z",
    "x-acs-signature-nonce": "0123456789abcdef0123456789abcdef",
    "x-acs-version": "2020-06-16",
}


def test_reference_vector() -> None:
    assert signing.canonical_query(VECTOR_QUERY) == (
        "ClientToken=tok%201&ServerGroupId=sgp-abc&Servers.1.Port=80&Servers.1.ServerId=i-1&Servers.1.ServerType=Ecs"
    )
    sig, signed = signing.signature("SECRET", "POST", "/", VECTOR_QUERY, VECTOR_HEADERS, signing.EMPTY_BODY_SHA256)
    assert sig == "bae9284876efd8757e6750bf220028a5e93069e976db6679815fc9b70ceb54b1"
    assert signed == "accept;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"


def test_empty_body_hash() -> None:
    assert signing.EMPTY_BODY_SHA256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [("a b", "a%20b"), ("*", "%2A"), ("/", "%2F"), ("~-_.", "~-_."), ("é", "%C3%A9"), ("+", "%2B")],
)
def test_percent_encoding(raw: str, encoded: str) -> None:
    assert signing.percent_encode(raw) == encoded


def test_header_names_are_lowercased_trimmed_and_sorted() -> None:
    canon, signed = signing.canonical_headers({"X-Acs-Date": " d ", "Host": "h", "accept": "a"})
    assert canon == "accept:a\nhost:h\nx-acs-date:d\n"
    assert signed == "accept;host;x-acs-date"


def test_parse_authorization_round_trip() -> None:
    header = signing.authorization("AKID", "SECRET", "POST", "/", VECTOR_QUERY, VECTOR_HEADERS, "x")
    parsed = signing.parse_authorization(header)
    assert parsed.algorithm == "ACS3-HMAC-SHA256"
    assert parsed.access_key_id == "AKID"
    assert parsed.signed_headers[0] == "accept"


@pytest.mark.parametrize("value", ["", "ACS3-HMAC-SHA256", "ACS3-HMAC-SHA256 Credential=a,Signature=b"])
def test_parse_authorization_rejects_incomplete(value: str) -> None:
    with pytest.raises(ValueError, match="Authorization lacks"):
        signing.parse_authorization(value)


def _random_text(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def test_equals_the_sdk_on_random_requests() -> None:
    rng = random.Random(20261128)
    value_alphabet = string.printable + "é中~*/+ "
    for _ in range(2000):
        query = {
            _random_text(rng, string.ascii_letters + string.digits + ".", 1, 20): _random_text(
                rng, value_alphabet, 0, 30
            )
            for _ in range(rng.randint(0, 12))
        }
        headers = {
            name: _random_text(rng, string.ascii_letters + string.digits + " -:/", 0, 40)
            for name in rng.sample(
                [
                    "accept",
                    "host",
                    "x-acs-action",
                    "x-acs-date",
                    "x-acs-version",
                    "content-type",
                    "user-agent",
                    "x-acs-security-token",
                    "x-acs-accesskey-id",
                    "x-acs-signature-nonce",
                    "X-Acs-Mixed-Case",
                ],
                rng.randint(1, 11),
            )
        }
        body_hash = signing.payload_hash(_random_text(rng, value_alphabet, 0, 200).encode())
        secret = _random_text(rng, string.ascii_letters + string.digits, 8, 30)
        method = rng.choice(["POST", "GET"])
        ours = signing.authorization("AK", secret, method, "/", query, headers, body_hash)
        request = SimpleNamespace(pathname="/", query=query, headers=headers, method=method)
        theirs = SdkUtils.get_authorization(request, "ACS3-HMAC-SHA256", body_hash, "AK", secret)
        assert ours == theirs, (query, headers)
