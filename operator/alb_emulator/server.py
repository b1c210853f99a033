"""The emulator's HTTP face: the signed ALB API at ``/`` and an unsigned admin API under ``/_emulator/``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from alb_emulator.auth import Authenticator, Credential, Request
from alb_emulator.dataplane import DataPlane, group_listener_port
from alb_emulator.errors import ApiError, error
from alb_emulator.faults import Faults
from alb_emulator.flowcontrol import FlowControl
from alb_emulator.operations import Operations, Prepared
from alb_emulator.params import unflatten
from alb_emulator.state import Behaviour, Group, Member, State, member_id

ADMIN = "/_emulator"
RPC_COMMON = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "Timestamp",
        "SignatureNonce",
        "SignatureMethod",
        "SignatureVersion",
        "AccessKeyId",
        "Signature",
        "SecurityToken",
        "RegionId",
    }
)
JSON_TYPE = "application/json;charset=utf-8"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json", headers=headers)


def group_from_json(raw: dict[str, Any]) -> Group:
    unknown = set(raw) - {"id", "type", "name", "status", "vpc_id", "servers", "connection_drain"}
    if unknown or not raw.get("id"):
        raise ValueError(f"a server group needs an id and takes no {', '.join(sorted(unknown))}")
    members = [Member(**s) for s in raw.get("servers", [])]
    group = Group(
        id=raw["id"],
        type=raw.get("type", "Ip"),
        name=raw.get("name", ""),
        status=raw.get("status", "Available"),
        vpc_id=raw.get("vpc_id", "vpc-emulator"),
    )
    if "connection_drain" in raw:
        group.set_connection_drain(raw["connection_drain"])
    group.members = {member_id(m): m for m in members}
    return group


class Emulator:
    def __init__(
        self,
        behaviour: Behaviour | None = None,
        state_file: Path | None = None,
        seed: int | None = None,
        clock_skew_seconds: float = 900.0,
        log_capacity: int = 200_000,
    ) -> None:
        self.state = State(behaviour, seed=seed)
        self.ops = Operations(self.state)
        self.dataplane = DataPlane(self.state)
        self.auth = Authenticator(clock_skew_seconds=clock_skew_seconds)
        self.faults = Faults()
        self.flow = FlowControl(self.state.behaviour.rate_limits)
        self.state_file = state_file
        self.log: deque[dict[str, Any]] = deque(maxlen=log_capacity)
        self.in_flight: dict[str, dict[str, Any]] = {}  # accepted and not answered yet (injected latency)
        self.counters: Counter[str] = Counter()
        self._saved_version = -1
        if state_file and state_file.exists():
            self.state.load_json(json.loads(state_file.read_text()))

    # -- configuration ---------------------------------------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        unknown = set(config) - {"credentials", "server_groups", "behaviour", "faults"}
        if unknown:
            raise ValueError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        for c in config.get("credentials", []):
            self.auth.add(Credential(**c))
        if "behaviour" in config:
            self.set_behaviour(config["behaviour"])
        for g in config.get("server_groups", []):
            group = group_from_json(g)
            self.state.groups.setdefault(group.id, group)
        if "faults" in config:
            self.faults = Faults.from_json(config["faults"])

    def set_behaviour(self, raw: dict[str, Any]) -> None:
        current = {k: getattr(self.state.behaviour, k) for k in Behaviour.__dataclass_fields__}
        self.state.behaviour = Behaviour.from_config({**current, **raw})
        self.flow.limits = self.state.behaviour.rate_limits  # calls already made still count

    # -- the signed API ----------------------------------------------------------------------------------------

    async def api(self, http: web.Request) -> web.StreamResponse:
        arrived = time.time()
        request_id = str(uuid.uuid4()).upper()
        body = await http.read()
        query = dict(parse_qsl(http.query_string, keep_blank_values=True))
        form = dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True)) if body else {}
        headers: dict[str, list[str]] = {}
        for name, value in http.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        raw = Request(method=http.method, path=http.path, query=query, headers=headers, body=body, form=form)
        action = (headers.get("x-acs-action") or [query.get("Action", "")])[0]
        params: dict[str, Any] = {}
        entry: dict[str, Any] = {"time": arrived, "action": action, "request_id": request_id}
        prepared: Prepared | None = None
        try:
            caller = self.auth.authenticate(raw)
            entry["access_key_id"], entry["signature"] = caller.access_key_id, caller.signature_version
            params = unflatten({k: v for k, v in {**form, **query}.items() if k not in RPC_COMMON})
            entry.update(_describe(params))
            if not self.flow.admit(action, time.monotonic()):
                throttled = error("Throttling.User")
                if self.state.behaviour.retry_after_ms:
                    throttled.headers["x-acs-retry-after"] = str(self.state.behaviour.retry_after_ms)
                raise throttled
            fault = self.faults.draw(action)
            delay = self.faults.delay_seconds(action) + (fault.latency_ms / 1000 if fault else 0)
            if fault and fault.kind == "error":
                raise error(fault.code or "InternalError")
            if fault and fault.kind in ("reset", "http", "truncated"):
                return self._broken(http, fault.kind, fault.status, fault.body, entry)
            # prepare and complete do not await, so each is atomic on the event loop; in between (the
            # injected latency) the request is in flight, and its ClientToken is claimed.
            prepared = self.ops.prepare(action, params)
            if delay:
                self.in_flight[request_id] = entry
                await asyncio.sleep(delay)
            result = self.ops.complete(prepared, time.time())
            prepared = None
            result["RequestId"] = request_id
            entry.update(code="OK", status=200, job_id=result.get("JobId"))
            return _json(result, headers={"x-acs-request-id": request_id})
        except ApiError as exc:
            entry.update(code=exc.code, status=exc.status)
            return _json(exc.body(request_id, http.host), status=exc.status, headers=exc.headers)
        finally:
            self.in_flight.pop(request_id, None)
            if prepared is not None:  # cancelled while in flight: the token is free again
                self.ops.abandon(prepared)
            entry["duration_ms"] = round((time.time() - arrived) * 1000, 3)
            self.log.append(entry)
            self.counters[f"{action}:{entry.get('code', 'ABORTED')}"] += 1

    def _broken(self, http: web.Request, kind: str, status: int, body: str, entry: dict[str, Any]) -> web.Response:
        entry.update(code=f"FAULT:{kind}", status=status if kind == "http" else None)
        if kind == "reset":
            if http.transport is not None:
                http.transport.abort()
            return web.Response(status=500)
        if kind == "http":
            return web.Response(text=body, status=status, content_type="text/html")
        return web.Response(text='{"JobId": "3b1e', status=200, content_type="application/json")

    # -- admin API (unsigned: tests and benchmarks only) -------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/", self.api),
            web.get("/", self.api),
            web.get(f"{ADMIN}/health", self.health),
            web.get(f"{ADMIN}/server-groups", self.list_groups),
            web.post(f"{ADMIN}/server-groups", self.put_group),
            web.get(f"{ADMIN}/server-groups/{{id}}", self.get_group),
            web.put(f"{ADMIN}/server-groups/{{id}}", self.update_group),
            web.delete(f"{ADMIN}/server-groups/{{id}}", self.delete_group),
            web.post(f"{ADMIN}/server-groups/{{id}}/idle", self.idle),
            web.get(f"{ADMIN}/server-groups/{{id}}/history", self.history),
            web.get(f"{ADMIN}/server-groups/{{id}}/additions", self.additions),
            web.post(f"{ADMIN}/server-groups/{{id}}/listener", self.open_listener),
            web.get(f"{ADMIN}/server-groups/{{id}}/listener", self.get_listener),
            web.delete(f"{ADMIN}/server-groups/{{id}}/listener", self.close_listener),
            web.get(f"{ADMIN}/server-groups/{{id}}/traffic", self.traffic),
            web.get(f"{ADMIN}/listeners", self.list_listeners),
            web.get(f"{ADMIN}/jobs", self.list_jobs),
            web.get(f"{ADMIN}/tokens", self.list_tokens),
            web.post(f"{ADMIN}/credentials", self.add_credential),
            web.get(f"{ADMIN}/faults", self.get_faults),
            web.put(f"{ADMIN}/faults", self.put_faults),
            web.delete(f"{ADMIN}/faults", self.clear_faults),
            web.get(f"{ADMIN}/behaviour", self.get_behaviour),
            web.put(f"{ADMIN}/behaviour", self.put_behaviour),
            web.get(f"{ADMIN}/requests", self.requests),
            web.get(f"{ADMIN}/in-flight", self.requests_in_flight),
            web.get(f"{ADMIN}/counters", self.get_counters),
            web.post(f"{ADMIN}/reset", self.reset),
        ]

    async def health(self, _: web.Request) -> web.Response:
        return _json({"ok": True})

    async def list_groups(self, _: web.Request) -> web.Response:
        self.state.advance(time.time())
        return _json([self._group_view(g) for g in self.state.groups.values()])

    async def put_group(self, http: web.Request) -> web.Response:
        try:
            group = group_from_json(await http.json())
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        self.state.groups[group.id] = group
        self.state.changed()
        return _json(self._group_view(group), status=201)

    async def get_group(self, http: web.Request) -> web.Response:
        self.state.advance(time.time())
        group = self.state.groups.get(http.match_info["id"])
        if group is None:
            return _json({"error": "no such server group"}, status=404)
        return _json(self._group_view(group))

    async def update_group(self, http: web.Request) -> web.Response:
        """Changes a group's attributes (``connection_drain``, ``name``); its servers are left as they are."""
        self.state.advance(time.time())
        group = self.state.groups.get(http.match_info["id"])
        if group is None:
            return _json({"error": "no such server group"}, status=404)
        try:
            raw = await http.json()
            if not isinstance(raw, dict) or set(raw) - {"connection_drain", "name"}:
                raise ValueError("a group update takes only connection_drain and name (POST replaces a group)")
            if "connection_drain" in raw:
                group.set_connection_drain(raw["connection_drain"])
            group.name = str(raw.get("name", group.name))
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        self.state.changed()
        return _json(self._group_view(group))

    async def idle(self, http: web.Request) -> web.Response:
        """Marks servers idle (no connections): ``{"server_ids": [...]}``, or every server when none are given.
        Draining ends at once for those Draining now, and on entry for the others."""
        group = self.state.groups.get(http.match_info["id"])
        if group is None:
            return _json({"error": "no such server group"}, status=404)
        raw = await http.json() if http.can_read_body else {}
        ids = raw.get("server_ids") if isinstance(raw, dict) else None
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            return _json({"error": "server_ids must be a list of ServerIds"}, status=400)
        return _json(self.state.mark_idle(group, ids, time.time()))

    async def history(self, http: web.Request) -> web.Response:
        """One record per removal, oldest first: removing_at, draining_at, gone_at, out_of_rotation_at (Unix
        seconds; Draining or gone, whichever came first) and how it ended. ``?since=`` keeps records started then
        or later, ``?server_id=`` one server's."""
        return self._records(http, "history", "removing_at")

    async def additions(self, http: web.Request) -> web.Response:
        """One record per addition, oldest first: adding_at (the call accepted, listed Adding from then on),
        available_at (the job's end, listed Available from then on; null until then, or if the job failed), in Unix
        seconds, and how it ended (available, job_failed). ``?since=`` keeps records started then or later,
        ``?server_id=`` one server's."""
        return self._records(http, "additions", "adding_at")

    def _records(self, http: web.Request, kind: str, started: str) -> web.Response:
        self.state.advance(time.time())
        group = self.state.groups.get(http.match_info["id"])
        if group is None:
            return _json({"error": "no such server group"}, status=404)
        since = float(http.query.get("since", 0))
        server_id = http.query.get("server_id")
        records = getattr(group, kind)
        return _json([r for r in records if r[started] >= since and (server_id is None or r["ServerId"] == server_id)])

    async def delete_group(self, http: web.Request) -> web.Response:
        """Deletes a group and closes its listener (requests in flight through it are cut); its traffic stays
        readable until the reset."""
        removed = self.state.groups.pop(http.match_info["id"], None)
        self.state.changed()
        await self.dataplane.close(http.match_info["id"], "group_deleted")
        return _json({"deleted": removed is not None})

    # -- the data plane (alb_emulator.dataplane) ------------------------------------------------------------------

    async def open_listener(self, http: web.Request) -> web.Response:
        """Opens the group's proxy on 127.0.0.1 (``{"port": N}``, default 0: a free port): 201 with its port, or
        200 with the one open already."""
        group_id = http.match_info["id"]
        if group_id not in self.state.groups:
            return _json({"error": "no such server group"}, status=404)
        try:
            port = group_listener_port(await http.json() if http.can_read_body else None)
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        try:
            listener, opened = await self.dataplane.open(group_id, port)
        except OSError as exc:
            return _json({"error": f"cannot listen on 127.0.0.1:{port}: {exc}"}, status=409)
        return _json(listener.to_json(), status=201 if opened else 200)

    async def get_listener(self, http: web.Request) -> web.Response:
        listener = self.dataplane.listeners.get(http.match_info["id"])
        if listener is None:
            return _json({"error": "no listener on this server group"}, status=404)
        return _json(listener.to_json())

    async def close_listener(self, http: web.Request) -> web.Response:
        """Closes the group's proxy; requests in flight through it are cut (counted)."""
        return _json({"closed": await self.dataplane.close(http.match_info["id"])})

    async def list_listeners(self, _: web.Request) -> web.Response:
        return _json([listener.to_json() for listener in self.dataplane.listeners.values()])

    async def traffic(self, http: web.Request) -> web.Response:
        """What the group's proxy did with the requests that arrived in [since, until) (Unix seconds): totals and
        per server requests, ok and failures by kind, and the events (``events=failures``, the default, ``all`` or
        ``none``). 404 if no listener was ever opened on the group since the reset."""
        detail = http.query.get("events", "failures")
        try:
            since = float(http.query.get("since", 0))
            until = float(http.query["until"]) if "until" in http.query else None
            if detail not in ("failures", "all", "none"):
                raise ValueError("events must be failures, all or none")
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        self.state.advance(time.time())
        view = self.dataplane.view(http.match_info["id"], since, until, detail)
        if view is None:
            return _json({"error": "no listener was opened on this server group"}, status=404)
        return _json(view)

    async def list_jobs(self, _: web.Request) -> web.Response:
        """Every job, with the servers it removes and adds (which the cloud's ListAsynJobs does not show)."""
        self.state.advance(time.time())
        return _json(
            [
                {
                    **j.to_api(),
                    "RemovedServers": [mid.split("|")[1] for mid in j.remove],
                    "AddedServers": [m.server_id for m in j.add],
                }
                for j in self.state.jobs.values()
            ]
        )

    async def list_tokens(self, _: web.Request) -> web.Response:
        """Every ClientToken remembered (those of calls that were answered; they survive a restart with
        --state-file): its action, the request's parameters, the JobId it answers with, and the parameters of any
        later request that reused it for something else (refused with IdempotenceSignatureMismatch)."""
        return _json(
            [
                {
                    "action": action,
                    "token": token,
                    "params": json.loads(record.fingerprint),
                    "job_id": (record.response or {}).get("JobId"),
                    "mismatched": [json.loads(f) for f in record.mismatched],
                }
                for (action, token), record in self.state.tokens.items()
                if record.response is not None
            ]
        )

    async def add_credential(self, http: web.Request) -> web.Response:
        try:
            self.auth.add(Credential(**await http.json()))
        except TypeError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json({"ok": True}, status=201)

    async def get_faults(self, _: web.Request) -> web.Response:
        return _json(self.faults.to_json())

    async def put_faults(self, http: web.Request) -> web.Response:
        try:
            self.faults = Faults.from_json(await http.json())
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(self.faults.to_json())

    async def clear_faults(self, _: web.Request) -> web.Response:
        self.faults = Faults()
        return _json(self.faults.to_json())

    async def get_behaviour(self, _: web.Request) -> web.Response:
        return _json(self.state.behaviour.__dict__)

    async def put_behaviour(self, http: web.Request) -> web.Response:
        try:
            self.set_behaviour(await http.json())
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(self.state.behaviour.__dict__)

    async def requests(self, http: web.Request) -> web.Response:
        since = float(http.query.get("since", 0))
        action = http.query.get("action")
        rows = [e for e in self.log if e["time"] >= since and (not action or e["action"] == action)]
        return _json(rows)

    async def requests_in_flight(self, _: web.Request) -> web.Response:
        """Requests received and not answered yet: proof that a call was under way at some moment."""
        return _json(list(self.in_flight.values()))

    async def get_counters(self, _: web.Request) -> web.Response:
        return _json(dict(self.counters))

    async def reset(self, _: web.Request) -> web.Response:
        """Forgets groups, jobs, tokens, faults, the request log and counters, closes every listener and forgets
        their traffic; keeps credentials and behaviour."""
        await self.dataplane.reset()
        behaviour = self.state.behaviour
        self.state.groups.clear()
        self.state.jobs.clear()
        self.state.tokens.clear()
        self.state.forget_drains()
        self.state.behaviour = behaviour
        self.state.changed()
        self.faults = Faults()
        self.flow = FlowControl(behaviour.rate_limits)
        self.log.clear()
        self.counters.clear()
        return _json({"ok": True})

    def _group_view(self, group: Group) -> dict[str, Any]:
        """The group as the API shows it, and what it does not show: DrainingUntil for a server that drains (whatever
        its Status shows, drain_status), Idle for one marked idle."""
        servers = []
        for m in group.members.values():
            server = m.to_api(group.id, self.state.behaviour.drain_status)
            if m.status == "Draining":
                server["DrainingUntil"] = m.drain_until
            if m.idle:
                server["Idle"] = True
            servers.append(server)
        return {**group.to_api(), "connection_drain": group.connection_drain(), "Servers": servers}

    # -- persistence -------------------------------------------------------------------------------------------

    def save(self) -> None:
        if self.state_file is None or self.state.version == self._saved_version:
            return
        version = self.state.version
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.to_json()))
        os.replace(tmp, self.state_file)
        self._saved_version = version

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.save()

    async def _line_limit(
        self, http: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """What aiohttp does with a request target longer than its max_line_size, at the behaviour's limit: a
        plain-text 400 in aiohttp's words before any handler runs, and the connection closed. Unlike aiohttp's, the
        refusal shows in the request log (code LineTooLong)."""
        limit = self.state.behaviour.max_request_line
        target = http.raw_path
        if len(target) <= limit:
            return await handler(http)
        action = http.headers.get("x-acs-action") or http.query.get("Action", "")
        self.log.append(
            {
                "time": time.time(),
                "action": action,
                "code": "LineTooLong",
                "status": 400,
                "request_line": len(target),
                "duration_ms": 0.0,
            }
        )
        self.counters[f"{action}:LineTooLong"] += 1
        seen = bytearray(target.encode()[:100]) + b"..."
        response = web.Response(
            text=f"Got more than {limit} bytes when reading: {seen!r}.", status=400, content_type="text/plain"
        )
        response.force_close()
        return response

    def app(self) -> web.Application:
        @web.middleware
        async def line_limit(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            return await self._line_limit(request, handler)

        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[line_limit])
        app.add_routes(self.routes())

        async def persistence(_: web.Application) -> Any:
            task = asyncio.create_task(self._persist_loop()) if self.state_file else None
            yield
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.dataplane.close_all("shutdown")
            self.save()

        app.cleanup_ctx.append(persistence)
        return app


def _describe(params: dict[str, Any]) -> dict[str, Any]:
    """The parts of a request worth keeping in the log."""
    servers = []
    for name in ("Servers", "RemovedServers", "AddedServers"):
        items = params.get(name)
        if isinstance(items, list):
            servers += [s.get("ServerId") for s in items if isinstance(s, dict)]
    out: dict[str, Any] = {"client_token": params.get("ClientToken"), "servers": servers}
    if params.get("ServerGroupId"):
        out["server_group_id"] = params["ServerGroupId"]
    if str(params.get("DryRun", "")).lower() == "true":
        out["dry_run"] = True
    return out
