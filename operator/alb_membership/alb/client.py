"""The async ALB API client: one shared aiohttp session, signed calls, typed errors, retries, flow control."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from yarl import URL

from alb_membership.alb import request as wire
from alb_membership.alb.credentials import CredentialsError, CredentialSource
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.errors import CREDENTIALS_UNAVAILABLE, AlbError, AlbTransportError, from_response
from alb_membership.alb.models import Job, RemoveAnswer, Server
from alb_membership.alb.ratelimit import SlidingWindowLimiter
from alb_membership.alb.retry import RetryPolicy, with_retries

MAX_JOB_IDS_PER_CALL = 20
PAGE_SIZE = 100

# Observers of every attempt, for metrics and logs: (action, outcome code, seconds).
CallObserver = Callable[[str, str, float], None]


class AlbClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        credentials: CredentialSource,
        *,
        retry: RetryPolicy | None = None,
        limiters: dict[str, SlidingWindowLimiter] | None = None,
        timeout_seconds: float = 10.0,
        observer: CallObserver | None = None,
    ) -> None:
        self._session = session
        self._endpoint = endpoint
        self._credentials = credentials
        self._retry = retry or RetryPolicy()
        self._limiters = limiters or {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._observer = observer
        self.retries = 0  # attempts repeated because of a retryable error, for reports and tests

    # -- the operations ------------------------------------------------------------------------------------

    async def remove_servers(
        self, server_group_id: str, servers: Sequence[Server], client_token: str, *, dry_run: bool = False
    ) -> RemoveAnswer:
        query = {
            "ServerGroupId": server_group_id,
            "ClientToken": client_token,
            **wire.flatten("Servers", [s.to_api() for s in servers]),
        }
        if dry_run:
            query["DryRun"] = "true"
        try:
            body = await self.call("RemoveServersFromServerGroup", query)
        except AlbError as exc:
            if exc.code == "ResourceNotFound.BackendServer":
                return RemoveAnswer("already_removed", request_id=exc.request_id or "")
            if dry_run and exc.code == "DryRunOperation":
                return RemoveAnswer("dry_run_passed", request_id=exc.request_id or "")
            raise
        return RemoveAnswer("accepted", request_id=str(body.get("RequestId", "")), job_id=_required(body, "JobId"))

    async def add_servers(
        self, server_group_id: str, servers: Sequence[Server], client_token: str, *, dry_run: bool = False
    ) -> str:
        """Returns the JobId. Servers travel in the form body, as the SDK sends them."""
        query = {"ServerGroupId": server_group_id, "ClientToken": client_token}
        if dry_run:
            query["DryRun"] = "true"
        body = await self.call("AddServersToServerGroup", query, wire.flatten("Servers", [s.to_api() for s in servers]))
        return _required(body, "JobId")

    async def list_server_group_servers(self, server_group_id: str) -> list[dict[str, Any]]:
        return await self._all_pages("ListServerGroupServers", {"ServerGroupId": server_group_id}, "Servers")

    async def servers_page(self, server_group_id: str, server_ids: Sequence[str]) -> tuple[list[dict[str, Any]], bool]:
        """One page of ListServerGroupServers for these ServerIds, and whether it is the whole answer: a read of
        one page is a snapshot of them, a paged one is not (a change between pages shifts them)."""
        query = {
            "ServerGroupId": server_group_id,
            "MaxResults": str(PAGE_SIZE),
            **wire.flatten("ServerIds", list(server_ids)),
        }
        body = await self.call("ListServerGroupServers", query)
        return _list(body, "Servers"), not body.get("NextToken")

    async def servers_in_rotation(self, server_group_id: str) -> set[Server]:
        """The group's servers that still take new requests (Server.in_rotation)."""
        return Server.in_rotation(await self.list_server_group_servers(server_group_id))

    async def list_server_groups(self, server_group_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        return await self._all_pages(
            "ListServerGroups", wire.flatten("ServerGroupIds", list(server_group_ids)), "ServerGroups"
        )

    async def list_asyn_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """Status of many jobs, up to 20 JobIds per call. Jobs the cloud does not know are left out."""
        chunks = [job_ids[i : i + MAX_JOB_IDS_PER_CALL] for i in range(0, len(job_ids), MAX_JOB_IDS_PER_CALL)]
        found: dict[str, Job] = {}
        for chunk in chunks:
            query = {**wire.flatten("JobIds", list(chunk)), "MaxResults": str(PAGE_SIZE)}
            body = await self.call("ListAsynJobs", query)
            for raw in _list(body, "Jobs"):
                status = raw.get("Status")
                if status not in ("Processing", "Succeeded", "Failed"):
                    raise AlbTransportError("InvalidResponse", f"job {raw.get('Id')} has status {status!r}")
                found[str(raw["Id"])] = Job(
                    job_id=str(raw["Id"]),
                    status=status,
                    error_code=raw.get("ErrorCode"),
                    error_message=raw.get("ErrorMessage"),
                )
        return found

    # -- transport -----------------------------------------------------------------------------------------

    async def call(self, action: str, query: dict[str, str], form: dict[str, str] | None = None) -> dict[str, Any]:
        """One API call with retries for retryable errors; the query (and its ClientToken) never changes."""

        def count_retry(_exc: AlbError, _sleep: float) -> None:
            self.retries += 1

        async def attempt() -> dict[str, Any]:
            return await self._attempt(action, query, form or {})

        return await with_retries(self._retry, attempt, count_retry)

    async def _attempt(self, action: str, query: dict[str, str], form: dict[str, str]) -> dict[str, Any]:
        limiter = self._limiters.get(action)
        if limiter is not None:
            await limiter.acquire()
        try:
            credentials = await self._credentials.get()
        except CredentialsError as exc:
            # An AlbError like any refusal, so the caller sets Degraded and says what to fix; not retried here.
            raise AlbError(CREDENTIALS_UNAVAILABLE, str(exc), retryable=False) from None
        signed = wire.sign(action, query, form, self._endpoint.host, credentials)
        url = URL(f"{self._endpoint.base_url}/?{signed.query_string}", encoded=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "OK"
        try:
            async with self._session.post(url, headers=signed.headers, data=signed.body, timeout=self._timeout) as resp:
                raw = await resp.read()
                status = resp.status
                headers = {k.lower(): v for k, v in resp.headers.items()}
            body = _parse(raw, status)
            if status >= 400:
                raise from_response(status, body, headers)
            if not isinstance(body, dict):
                raise AlbTransportError("InvalidResponse", f"HTTP {status} answer is not a JSON object")
            return body
        except AlbError as exc:
            outcome = exc.code
            raise
        except TimeoutError:
            outcome = "Transport.Timeout"
            raise AlbTransportError(outcome, f"no answer within {self._timeout.total}s") from None
        except aiohttp.ClientError as exc:
            outcome = "Transport.ConnectionError"
            raise AlbTransportError(outcome, f"{type(exc).__name__}: {exc}") from None
        finally:
            if self._observer is not None:
                self._observer(action, outcome, loop.time() - started)

    async def _all_pages(self, action: str, query: dict[str, str], key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page_query = {**query, "MaxResults": str(PAGE_SIZE), **({"NextToken": token} if token else {})}
            body = await self.call(action, page_query)
            items += _list(body, key)
            token = str(body.get("NextToken") or "")
            if not token:
                return items


def _parse(raw: bytes, status: int) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        snippet = raw[:80].decode(errors="replace")
        raise AlbTransportError(
            "InvalidResponse", f"HTTP {status} answer is not the API's JSON: {snippet!r}", http_status=status
        ) from None


def _required(body: Any, key: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not value:
        raise AlbTransportError("InvalidResponse", f"the answer has no {key}")
    return str(value)


def _list(body: Any, key: str) -> list[dict[str, Any]]:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, list):
        raise AlbTransportError("InvalidResponse", f"the answer has no {key} list")
    return value
