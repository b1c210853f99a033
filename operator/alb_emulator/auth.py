"""Authenticates requests as the cloud's API gateway does: ACS3-HMAC-SHA256 (the SDK's default) and the
legacy RPC HMAC-SHA1 signature, with AccessKey and STS credentials, clock-skew and nonce-replay checks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from alb_emulator.errors import error
from alb_membership.alb import signing

API_VERSION = "2020-06-16"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    access_key_secret: str
    security_token: str | None = None
    expires_at: float | None = None  # epoch seconds, for STS credentials


@dataclass(frozen=True)
class Caller:
    access_key_id: str
    action: str
    signature_version: str  # "ACS3" or "RPC"


@dataclass(frozen=True)
class Request:
    """What authentication needs of an HTTP request: the raw parts, nothing parsed into business params."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, list[str]]  # lower-case names, all values
    body: bytes
    form: Mapping[str, str]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def rpc_signature(params: Mapping[str, str], method: str, secret: str) -> str:
    """The legacy signature: base64(HMAC-SHA1(secret + "&", METHOD&%2F&pe(canonicalized params)))."""
    canonical = "&".join(f"{signing.percent_encode(k)}={signing.percent_encode(params[k])}" for k in sorted(params))
    string_to_sign = f"{method.upper()}&%2F&{signing.percent_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class Authenticator:
    def __init__(self, clock_skew_seconds: float = 900.0, nonce_capacity: int = 500_000) -> None:
        self.credentials: dict[str, Credential] = {}
        self.clock_skew = clock_skew_seconds
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._nonce_capacity = nonce_capacity

    def add(self, credential: Credential) -> None:
        self.credentials[credential.access_key_id] = credential

    def authenticate(self, request: Request) -> Caller:
        authorization = request.header("authorization")
        if authorization:
            return self._acs3(request, authorization)
        if "Signature" in request.query:
            return self._rpc(request)
        raise error("IncompleteSignature", "The request is not signed: no Authorization header or Signature.")

    # -- ACS3 ----------------------------------------------------------------------------------------------

    def _acs3(self, request: Request, authorization: str) -> Caller:
        try:
            parsed = signing.parse_authorization(authorization)
        except ValueError as exc:
            raise error("IncompleteSignature", str(exc)) from None
        if parsed.algorithm != signing.ALGORITHM:
            raise error("IncompleteSignature", f"The signature algorithm {parsed.algorithm} is not supported.")
        signed = set(parsed.signed_headers)
        unsigned = [n for n in request.headers if (n.startswith("x-acs-") or n == "host") and n not in signed]
        if unsigned:
            raise error("IncompleteSignature", f"Headers must be signed: {', '.join(sorted(unsigned))}.")
        for name in ("x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256", "x-acs-action"):
            if not request.header(name):
                raise error("IncompleteSignature", f"The header {name} is missing.")
        credential = self._credential(parsed.access_key_id, request.header("x-acs-security-token"))
        self._check_date(request.header("x-acs-date") or "")
        body_hash = request.header("x-acs-content-sha256") or ""
        if body_hash != signing.payload_hash(request.body):
            raise error("SignatureDoesNotMatch", "The request body does not match x-acs-content-sha256.")
        headers = {n: ",".join(request.headers.get(n, [])) for n in parsed.signed_headers}
        expected, _ = signing.signature(
            credential.access_key_secret, request.method, request.path, request.query, headers, body_hash
        )
        if not hmac.compare_digest(expected, parsed.signature):
            raise error("SignatureDoesNotMatch", "The request signature does not conform to Aliyun standards.")
        self._use_nonce(request.header("x-acs-signature-nonce") or "")
        version = request.header("x-acs-version")
        if version != API_VERSION:
            raise error("InvalidVersion", f"Specified parameter Version {version!r} is not valid.")
        return Caller(parsed.access_key_id, request.header("x-acs-action") or "", "ACS3")

    # -- RPC (legacy) --------------------------------------------------------------------------------------

    def _rpc(self, request: Request) -> Caller:
        params = {**request.form, **request.query}
        for name in ("AccessKeyId", "SignatureNonce", "Timestamp", "Action", "Version"):
            if not params.get(name):
                raise error("MissingParameter", f"The input parameter {name} that is mandatory is not supplied.")
        if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
            raise error("IncompleteSignature", "SignatureMethod must be HMAC-SHA1 and SignatureVersion 1.0.")
        credential = self._credential(params["AccessKeyId"], params.get("SecurityToken"))
        self._check_date(params["Timestamp"])
        given = params.pop("Signature")
        expected = rpc_signature(params, request.method, credential.access_key_secret)
        if not hmac.compare_digest(expected, given):
            raise error("SignatureDoesNotMatch", "The request signature does not conform to Aliyun standards.")
        self._use_nonce(params["SignatureNonce"])
        if params["Version"] != API_VERSION:
            raise error("InvalidVersion", f"Specified parameter Version {params['Version']!r} is not valid.")
        return Caller(params["AccessKeyId"], params["Action"], "RPC")

    # -- shared checks -------------------------------------------------------------------------------------

    def _credential(self, access_key_id: str, security_token: str | None) -> Credential:
        credential = self.credentials.get(access_key_id)
        if credential is None:
            raise error("InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        if credential.security_token is not None:
            if security_token != credential.security_token:
                raise error("InvalidSecurityToken.Mismatch", "The security token does not match the access key.")
            if credential.expires_at is not None and time.time() >= credential.expires_at:
                raise error("InvalidSecurityToken.Expired", "The security token has expired.")
        return credential

    def _check_date(self, value: str) -> None:
        try:
            when = dt.datetime.strptime(value, _DATE_FORMAT).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            raise error("InvalidTimeStamp.Format", f"The timestamp {value!r} is not in UTC ISO 8601.") from None
        if abs(time.time() - when) > self.clock_skew:
            raise error("InvalidTimeStamp.Expired", f"The timestamp {value} is out of the allowed window.")

    def _use_nonce(self, nonce: str) -> None:
        now = time.monotonic()
        # Entries older than the skew window cannot be replayed anyway (their date would be refused).
        while self._nonces and (
            len(self._nonces) >= self._nonce_capacity or next(iter(self._nonces.values())) < now - 2 * self.clock_skew
        ):
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise error("SignatureNonceUsed", "Specified signature nonce was used already.")
        self._nonces[nonce] = now
