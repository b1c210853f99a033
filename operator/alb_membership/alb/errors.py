"""The ALB client's errors: one hierarchy carrying the cloud's code, message, RequestId and HTTP status."""

from __future__ import annotations

from typing import Any

# Not the cloud's: the operator's credential chain gave nothing usable (a refresh failed, nothing configured).
CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
# The cloud's answer to one ClientToken sent with different parameters: the next try needs a new token.
IDEMPOTENCE_MISMATCH = "IdempotenceSignatureMismatch"
# The name other Alibaba Cloud APIs give the same answer (reference/alb-api.md section 10): treated alike.
IDEMPOTENCE_MISMATCHES = frozenset({IDEMPOTENCE_MISMATCH, "IdempotentParameterMismatch"})

RETRYABLE_CODES = frozenset(
    {
        "IncorrectStatus.ServerGroup",
        "SystemBusy",
        "IdempotenceProcessing",
        "ServiceUnavailable",
        "InternalError",
        "Conflict.Lock",
    }
)

# Refusals that no repeat of the same request gets past, whatever HTTP status they come with: a person must act
# (model/health.py's advice says what to do) or the request must change. Never retried by the client.
FINAL_CODES = frozenset(
    {
        "QuotaExceeded.ServersNum",  # the group holds the most servers ALB allows in one group (quotas.py)
        "Mismatch.ServerType",  # the group's type does not take this server type
        "IllegalParam.Weight",  # a weight outside 0..100
    }
)


def is_retryable(code: str, status: int | None) -> bool:
    if code in FINAL_CODES:
        return False
    return code in RETRYABLE_CODES or code.startswith(("Throttling", "Rejected.Throttling")) or (status or 0) >= 500


class AlbError(Exception):
    """An error the ALB API (or the way to it) answered with. Never carries credentials."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.http_status = http_status
        self.retry_after = retry_after  # seconds, from x-acs-retry-after
        self.retryable = is_retryable(code, http_status) if retryable is None else retryable

    def __str__(self) -> str:
        where = ", ".join(
            p
            for p in (
                f"RequestId {self.request_id}" if self.request_id else "",
                f"HTTP {self.http_status}" if self.http_status else "",
            )
            if p
        )
        return f"{self.code}: {self.message}" + (f" ({where})" if where else "")


class AlbThrottled(AlbError):
    """Flow control refused the call (``Throttling*``); retried after the advertised delay."""


class AlbTransportError(AlbError):
    """No usable answer: timeout, connection reset, or a response that is not the API's JSON.

    Always retryable: every mutating call carries a ClientToken, so repeating one that did reach the cloud
    returns the original job instead of starting another.
    """

    def __init__(self, code: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(code, message, http_status=http_status, retryable=True)


def from_response(status: int, body: Any, headers: dict[str, str]) -> AlbError:
    """Maps an error answer (status >= 400, JSON body already parsed) to the right exception."""
    data = body if isinstance(body, dict) else {}
    code = str(data.get("Code") or data.get("code") or f"HTTP{status}")
    message = str(data.get("Message") or data.get("message") or "no message")
    request_id = data.get("RequestId") or data.get("requestId") or headers.get("x-acs-request-id")
    retry_after = None
    raw_retry = headers.get("x-acs-retry-after")
    if raw_retry and raw_retry.isdigit() and int(raw_retry) > 0:
        retry_after = int(raw_retry) / 1000  # milliseconds on the wire
    cls = AlbThrottled if code.startswith("Throttling") or retry_after else AlbError
    return cls(code, message, request_id=request_id, http_status=status, retry_after=retry_after)


class AlbRequestRefused(AlbError):
    """Something on the way (the API gateway's request-line limit, a proxy, a WAF) refused the request with a 4xx
    that is not the API's JSON. Not retried as it is: the same request gets the same answer. A call of several
    servers is split; one server refused alone is a failure a person must see."""

    def __init__(self, message: str, *, http_status: int) -> None:
        super().__init__("Transport.Refused", message, http_status=http_status, retryable=False)
