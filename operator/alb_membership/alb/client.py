"""The async ALB API client: one shared aiohttp session, signed calls, typed errors, retries, flow control."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import aiohttp
from yarl import URL

from alb_membership.alb import request as wire
from alb_membership.alb.credentials import CredentialsError, CredentialSource
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.errors import (
    CREDENTIALS_UNAVAILABLE,
    AlbError,
    AlbRequestRefused,
    AlbTransportError,
    from_response,
)
from alb_membership.alb.models import DEFAULT_WEIGHT, AddAnswer, Job, ListedServer, RemoveAnswer, Server
from alb_membership.alb.ratelimit import SlidingWindowLimiter
from alb_membership.alb.retry import RetryPolicy, with_retries

log = logging.getLogger(__name__)

MAX_JOB_IDS_PER_CALL = 20
PAGE_SIZE = 100
MAX_SERVER_IDS_PER_READ = 40
LISTING_TRIES = 3  # a listing whose pages disagree is taken again this many times before it counts as failed
JOB_STATUSES = ("Processing", "Succeeded", "Failed")
MAX_UNREADABLE_TOLD = 1000

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
        self._unreadable_jobs: set[Any] = set()

    # -- the operations ------------------------------------------------------------------------------------

    async def remove_servers(
        self, server_group_id: str, servers: Sequence[Server], client_token: str, *, dry_run: bool = False
    ) -> RemoveAnswer:
        """Servers travel in the query, as the SDK sends them."""
        outcome, request_id, job_id = await self._start_job(
            "RemoveServersFromServerGroup",
            server_group_id,
            client_token,
            dry_run,
            query=wire.flatten("Servers", [s.to_api() for s in servers]),
            done_already="ResourceNotFound.BackendServer",
        )
        return RemoveAnswer("already_removed" if outcome == "done_already" else outcome, request_id, job_id)

    async def add_servers(
        self,
        server_group_id: str,
        servers: Sequence[Server],
        client_token: str,
        *,
        weights: Mapping[Server, int] | int = DEFAULT_WEIGHT,
        dry_run: bool = False,
    ) -> AddAnswer:
        """Servers travel in the form body, each with its ``Weight`` (0..100), as the SDK sends them. ``weights``:
        one for all, or one per server (a mapping may hold more servers than the call, e.g. one for all batches;
        a server it lacks is a ValueError, as is a weight out of range, before anything is sent)."""
        if isinstance(weights, Mapping):
            missing = [s for s in servers if s not in weights]
            if missing:
                raise ValueError(f"no weight given for {', '.join(map(str, missing))}")
            each = [weights[s] for s in servers]
        else:
            each = [weights] * len(servers)
        outcome, request_id, job_id = await self._start_job(
            "AddServersToServerGroup",
            server_group_id,
            client_token,
            dry_run,
            form=wire.flatten("Servers", [s.to_api(w) for s, w in zip(servers, each, strict=True)]),
            done_already="ResourceAlreadyAssociated.BackendServer",
        )
        return AddAnswer("already_added" if outcome == "done_already" else outcome, request_id, job_id)

    async def _start_job(
        self,
        action: str,
        server_group_id: str,
        client_token: str,
        dry_run: bool,
        *,
        query: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        done_already: str,
    ) -> tuple[Literal["accepted", "done_already", "dry_run_passed"], str, str | None]:
        """One call that starts a job on a group's servers: (outcome, RequestId, JobId). ``query`` and ``form``:
        the action's own parameters, where the SDK puts them. ``done_already``: the code with which the cloud
        refuses the whole call because what it asks is the case already for some of its servers."""
        params = {"ServerGroupId": server_group_id, "ClientToken": client_token, **(query or {})}
        if dry_run:
            params["DryRun"] = "true"
        try:
            body = await self.call(action, params, dict(form or {}))
        except AlbError as exc:
            if exc.code == done_already:
                return "done_already", exc.request_id or "", None
            if dry_run and exc.code == "DryRunOperation":
                return "dry_run_passed", exc.request_id or "", None
            raise
        return "accepted", str(body.get("RequestId", "")), _required(body, "JobId")

    async def list_server_group_servers(
        self, server_group_id: str, server_ids: Sequence[str] = (), *, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        """Every server of the group (or those with ``server_ids``), from pages that agree with each other."""
        query = {"ServerGroupId": server_group_id}
        if not server_ids:
            return await self._all_pages("ListServerGroupServers", query, "Servers", deadline)
        out: list[dict[str, Any]] = []
        ids = sorted(set(server_ids))
        for i in range(0, len(ids), MAX_SERVER_IDS_PER_READ):
            chunk = {**query, **wire.flatten("ServerIds", ids[i : i + MAX_SERVER_IDS_PER_READ])}
            out += await self._all_pages("ListServerGroupServers", chunk, "Servers", deadline)
        return out

    async def listed_servers(
        self, server_group_id: str, servers: Sequence[Server] = (), *, deadline: float | None = None
    ) -> dict[Server, ListedServer]:
        """Each server of the group as listed (its Status and Weight), or of ``servers`` those the listing has, read
        by their ServerIds (as still_in_rotation reads them). As with every paged listing, a server missing from a
        whole-group answer may have moved between pages; ask about it by itself before taking it for gone."""
        listed = await self.list_server_group_servers(
            server_group_id, [s.server_id for s in servers], deadline=deadline
        )
        found = {x.server: x for x in map(ListedServer.from_api, listed)}
        if not servers:
            return found
        return {s: found[s] for s in servers if s in found}

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

    async def servers_in_rotation(self, server_group_id: str, *, deadline: float | None = None) -> set[Server]:
        """The group's servers that still take new requests (Server.in_rotation). Absence from it is a hint, not
        proof: pages that agreed can still have missed a server moved between them; ``still_in_rotation`` asks
        about such servers alone before anything is concluded from their absence."""
        return Server.in_rotation(await self.list_server_group_servers(server_group_id, deadline=deadline))

    async def out_of_rotation(
        self, server_group_id: str, servers: Sequence[Server], *, deadline: float | None = None
    ) -> set[Server]:
        """Which of ``servers`` are out of the group's rotation (gone, or draining): missing from a whole listing
        and from a read of their own."""
        candidates = set(servers) - await self.servers_in_rotation(server_group_id, deadline=deadline)
        return candidates - await self.still_in_rotation(server_group_id, sorted(candidates), deadline=deadline)

    async def still_in_rotation(
        self, server_group_id: str, servers: Sequence[Server], *, deadline: float | None = None
    ) -> set[Server]:
        """Which of ``servers`` the group has in rotation, read for those servers alone (ServerIds): the
        follow-up that turns "not in the listing" into "gone"."""
        if not servers:
            return set()
        listed = await self.list_server_group_servers(
            server_group_id, [s.server_id for s in servers], deadline=deadline
        )
        return Server.in_rotation(listed) & set(servers)

    async def list_server_groups(
        self, server_group_ids: Sequence[str] = (), *, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        return await self._all_pages(
            "ListServerGroups", wire.flatten("ServerGroupIds", list(server_group_ids)), "ServerGroups", deadline
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
                if status not in JOB_STATUSES or not raw.get("Id"):
                    # One job the operator cannot read must not blind it to every other job of the region: left
                    # out, it stays unconfirmed (Unknown once its time is up).
                    if len(self._unreadable_jobs) < MAX_UNREADABLE_TOLD and raw.get("Id") not in self._unreadable_jobs:
                        self._unreadable_jobs.add(raw.get("Id"))  # told once, not on every poll
                        log.warning("ListAsynJobs: job %s has status %r; left unconfirmed", raw.get("Id"), status)
                    continue
                found[str(raw["Id"])] = Job(
                    job_id=str(raw["Id"]),
                    status=status,
                    error_code=raw.get("ErrorCode"),
                    error_message=raw.get("ErrorMessage"),
                )
        return found

    # -- transport -----------------------------------------------------------------------------------------

    async def call(
        self,
        action: str,
        query: dict[str, str],
        form: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """One API call with retries for retryable errors; the query (and its ClientToken) never changes.
        ``deadline`` (the event loop's clock): the caller's budget, which the retries, the wait for a rate-limit
        slot and the last attempt all stay within."""

        def count_retry(_exc: AlbError, _sleep: float) -> None:
            self.retries += 1

        async def attempt() -> dict[str, Any]:
            return await self._attempt(action, query, form or {})

        if deadline is None:
            return await with_retries(self._retry, attempt, count_retry)
        policy = self._retry.within(deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout_at(deadline):
                return await with_retries(policy, attempt, count_retry)
        except TimeoutError:
            raise AlbTransportError("Transport.Deadline", f"{action}: no answer within the caller's time") from None

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
            body = _parse(raw, status, action)
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

    async def _all_pages(
        self, action: str, query: dict[str, str], key: str, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        """All pages of a listing. Pages are not a snapshot: a change between two of them shifts what the next
        one holds. A listing whose pages disagree (TotalCount changed, or the items are not TotalCount distinct
        ones) is taken again; one that keeps disagreeing fails."""
        for _ in range(LISTING_TRIES):
            items: list[dict[str, Any]] = []
            totals: set[int] = set()
            token = ""
            while True:
                page_query = {**query, "MaxResults": str(PAGE_SIZE), **({"NextToken": token} if token else {})}
                body = await self.call(action, page_query, deadline=deadline)
                items += _list(body, key)
                if isinstance(body.get("TotalCount"), int):
                    totals.add(body["TotalCount"])
                token = str(body.get("NextToken") or "")
                if not token:
                    break
            distinct = {json.dumps(item, sort_keys=True) for item in items}
            if not totals or (len(totals) == 1 and len(distinct) == len(items) == totals.pop()):
                return items
            log.info("%s changed while it was paged; listing again", action)
        raise AlbTransportError("Listing.Inconsistent", f"{action}: the pages kept disagreeing ({LISTING_TRIES} tries)")


def _parse(raw: bytes, status: int, action: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        snippet = raw[:80].decode(errors="replace")
        message = f"{action}: HTTP {status} answer is not the API's JSON: {snippet!r}"
        if 400 <= status < 500 and status not in (408, 429):
            raise AlbRequestRefused(message, http_status=status) from None
        raise AlbTransportError("InvalidResponse", message, http_status=status) from None


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
