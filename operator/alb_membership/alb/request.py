"""Builds one signed ALB API request (ACS3-HMAC-SHA256) the way the official SDK lays it out."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from alb_membership import __version__
from alb_membership.alb import signing
from alb_membership.alb.credentials import Credentials

API_VERSION = "2020-06-16"
USER_AGENT = f"alb-membership-operator/{__version__}"


def flatten(name: str, items: Sequence[Mapping[str, str] | str]) -> dict[str, str]:
    """Lists go out as ``Name.N`` and lists of objects as ``Name.N.Field``, numbered from 1."""
    out: dict[str, str] = {}
    for index, item in enumerate(items, start=1):
        if isinstance(item, str):
            out[f"{name}.{index}"] = item
        else:
            out.update({f"{name}.{index}.{key}": value for key, value in item.items()})
    return out


@dataclass(frozen=True)
class SignedRequest:
    query_string: str
    headers: dict[str, str]
    body: bytes


def sign(
    action: str,
    query: Mapping[str, str],
    form: Mapping[str, str],
    host: str,
    credentials: Credentials,
    *,
    now: dt.datetime | None = None,
    nonce: str | None = None,
) -> SignedRequest:
    body = signing.canonical_query(form).encode() if form else b""
    headers = {
        "host": host,
        "accept": "application/json",
        "user-agent": USER_AGENT,
        "x-acs-action": action,
        "x-acs-version": API_VERSION,
        "x-acs-date": (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": nonce or secrets.token_hex(16),
        "x-acs-content-sha256": signing.payload_hash(body),
    }
    if body:
        headers["content-type"] = "application/x-www-form-urlencoded"
    if credentials.security_token:
        headers["x-acs-accesskey-id"] = credentials.access_key_id
        headers["x-acs-security-token"] = credentials.security_token
    headers["authorization"] = signing.authorization(
        credentials.access_key_id,
        credentials.access_key_secret,
        "POST",
        "/",
        query,
        headers,
        headers["x-acs-content-sha256"],
    )
    return SignedRequest(query_string=signing.canonical_query(query), headers=headers, body=body)
