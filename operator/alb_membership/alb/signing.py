"""ACS3-HMAC-SHA256 request signing, byte for byte as the official SDK (tea-openapi 0.4.x) does it.

Pure functions only: the client signs with them and the ALB emulator verifies with them, and tests compare
them with the SDK's own ``Utils.get_authorization`` on random requests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def percent_encode(value: str) -> str:
    """RFC 3986: only A-Z a-z 0-9 - _ . ~ stay as they are (space is %20, * is %2A, / is %2F)."""
    return quote(value, safe="~", encoding="utf-8")


def canonical_query(query: Mapping[str, str]) -> str:
    # The SDK sorts by plain string order and does not encode keys; our keys are [A-Za-z0-9.] anyway.
    return "&".join(f"{key}={percent_encode(query[key])}" for key in sorted(query))


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """Returns (CanonicalHeaders, SignedHeaders) over every header given, names lower-cased, values trimmed."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        merged.setdefault(name.lower(), []).append(value.strip())
    names = sorted(merged)
    return "".join(f"{n}:{','.join(sorted(merged[n]))}\n" for n in names), ";".join(names)


def payload_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signature(
    secret: str, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body_hash: str
) -> tuple[str, str]:
    """Returns (Signature, SignedHeaders) for a request whose signed headers are exactly ``headers``."""
    canon_headers, signed = canonical_headers(headers)
    canonical_request = "\n".join(
        [method.upper(), path or "/", canonical_query(query), canon_headers, signed, body_hash]
    )
    string_to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    return digest, signed


def authorization(
    access_key_id: str,
    secret: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body_hash: str,
) -> str:
    sig, signed = signature(secret, method, path, query, headers, body_hash)
    return f"{ALGORITHM} Credential={access_key_id},SignedHeaders={signed},Signature={sig}"


@dataclass(frozen=True)
class ParsedAuthorization:
    algorithm: str
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization:
    """Parses an ``Authorization: ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`` header.

    Raises ValueError naming what is missing; the emulator turns that into ``IncompleteSignature``.
    """
    algorithm, _, rest = value.strip().partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if not algorithm or missing:
        raise ValueError(f"Authorization lacks {', '.join(missing) or 'an algorithm'}")
    return ParsedAuthorization(
        algorithm=algorithm,
        access_key_id=fields["Credential"],
        signed_headers=tuple(fields["SignedHeaders"].split(";")),
        signature=fields["Signature"],
    )
