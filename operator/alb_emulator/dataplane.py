"""The ALB data plane, emulated: an L7 proxy per server group, and what happened to every request it took.

A listener (opened through the admin API) is an HTTP server on 127.0.0.1 of its own. Each request it takes goes to
one server the group has in rotation, chosen by smooth weighted round robin (the groups' ``Scheduler`` is ``Wrr``),
over a new connection to the server's address: the ServerId of an ``Ip`` server, the ServerIp of any other. The
rotation is read from the emulator's state at the request's arrival, so it follows the control plane's clock:

* a server is in rotation while ``Available`` (or ``Configuring``) with a weight above 0, and while ``Removing``
  (its removal job still running) unless ``removing_gets_requests`` is false; ``Adding`` and ``Draining`` servers,
  and servers gone, get no new request;
* a request in flight to a server that starts draining may finish until the drain timeout ends, and is cut then
  (the client gets a 500, as the ALB guide says); the server leaves the group as soon as it has no request in
  flight (``drain_ends_when_idle``);
* a request in flight to a server removed without draining finishes or is cut, ``undrained_in_flight``;
* no server in rotation: the proxy answers 503.

Every request is counted per group and per server, with its times (docs/emulator.md, "The data plane, as a model").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from alb_emulator.state import Behaviour, Member, State, member_id

# What can happen to a request: ok, or one of these failures.
FAILURE_KINDS = ("refused", "reset", "timeout", "backend_5xx", "no_server", "cut", "unroutable")
# The proxy's own answer for each failure it makes (backend_5xx is the backend's answer, passed on).
FAILURE_STATUS = {"refused": 502, "reset": 502, "timeout": 504, "no_server": 503, "cut": 500, "unroutable": 502}
FAILURE_HEADER = "X-Emulator-Failure"  # on the proxy's own answers: the failure's kind
SERVER_HEADER = "X-Emulator-Server-Id"  # on every answer from a server: its ServerId
BACKEND_HEADER = "X-Emulator-Backend"  # and the address the proxy sent the request to
TICK_SECONDS = 0.02  # how often a request in flight looks at its server's state
EVENTS_PER_GROUP = 200_000  # the oldest are dropped past this (and counted as dropped)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


@dataclass(slots=True)
class Event:
    """One request the listener took."""

    at: float  # arrival (its body read), when its server was chosen
    ended: float
    kind: str  # ok or one of FAILURE_KINDS
    status: int  # what the client got
    server_id: str | None = None
    member: str | None = None  # the member id, which tells servers with one ServerId apart by port
    backend: str | None = None  # ip:port
    routed_as: str | None = None  # the server's Status when it was chosen: Available, Removing or Configuring
    reason: str | None = None  # more on a failure: errno, drain_timeout, ...

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "ended": self.ended,
            "latency_ms": round((self.ended - self.at) * 1000, 3),
            "kind": self.kind,
            "status": self.status,
            "server_id": self.server_id,
            "member": self.member,
            "backend": self.backend,
            "routed_as": self.routed_as,
            "reason": self.reason,
        }


def _failures() -> dict[str, int]:
    return dict.fromkeys(FAILURE_KINDS, 0)


class Traffic:
    """A group's requests, kept until the emulator's reset (also after its listener or the group is gone)."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque(maxlen=EVENTS_PER_GROUP)
        self.dropped = 0

    def add(self, event: Event) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(event)

    def view(self, since: float, until: float | None, detail: str, in_flight: dict[str, int]) -> dict[str, Any]:
        """Counts of the requests that arrived in [since, until), per group and per server, and the events:
        ``detail`` failures (default), all or none."""
        chosen = [e for e in self.events if e.at >= since and (until is None or e.at < until)]
        totals: dict[str, Any] = {"requests": len(chosen), "ok": 0, "failures": _failures()}
        servers: dict[str, dict[str, Any]] = {}
        for e in chosen:
            if e.kind == "ok":
                totals["ok"] += 1
            else:
                totals["failures"][e.kind] += 1
            if e.member is None:
                continue
            s = servers.get(e.member)
            if s is None:
                s = servers[e.member] = {
                    "member": e.member,
                    "server_id": e.server_id,
                    "backend": e.backend,
                    "requests": 0,
                    "ok": 0,
                    "failures": _failures(),
                    "first_at": e.at,
                    "last_at": e.at,
                    "in_flight": 0,
                }
            s["requests"] += 1
            s["last_at"] = max(s["last_at"], e.at)
            if e.kind == "ok":
                s["ok"] += 1
            else:
                s["failures"][e.kind] += 1
        for mid, n in in_flight.items():
            if mid in servers:
                servers[mid]["in_flight"] = n
        out: dict[str, Any] = {
            "since": since,
            "until": until,
            "totals": totals,
            "servers": sorted(servers.values(), key=lambda s: str(s["member"])),
            "in_flight": sum(in_flight.values()),
            "dropped": self.dropped,
            "oldest_at": self.events[0].at if self.events else None,
        }
        if detail == "all":
            out["events"] = [e.to_json() for e in chosen]
        elif detail == "failures":
            out["events"] = [e.to_json() for e in chosen if e.kind != "ok"]
        return out


@dataclass(eq=False)
class Flight:
    """A request on its way to a server."""

    member: str
    at: float
    deadline: float | None = None  # once its server drains: when the drain timeout ends
    closed: str | None = None  # set when the listener closes under it
    finish: bool = False  # its server was removed without draining, and undrained_in_flight is finish


@dataclass(eq=False)
class Listener:
    group_id: str
    port: int
    runner: web.AppRunner
    session: aiohttp.ClientSession
    flights: set[Flight] = field(default_factory=set)
    current: dict[str, int] = field(default_factory=dict)  # smooth weighted round robin, per member id
    idle_from: dict[str, float] = field(default_factory=dict)  # member id -> when its last request ended

    def pick(self, members: list[Member]) -> Member:
        """Smooth weighted round robin (as nginx's): over a whole round every server gets its weight's share."""
        total = 0
        best: Member | None = None
        best_score = 0
        for m in members:
            mid = member_id(m)
            score = self.current.get(mid, 0) + m.weight
            self.current[mid] = score
            total += m.weight
            if best is None or score > best_score:
                best, best_score = m, score
        assert best is not None
        self.current[member_id(best)] -= total
        if len(self.current) > len(members):
            keep = {member_id(m) for m in members}
            self.current = {k: v for k, v in self.current.items() if k in keep}
        return best

    def in_flight(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.flights:
            counts[f.member] = counts.get(f.member, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "server_group_id": self.group_id,
            "port": self.port,
            "url": f"http://127.0.0.1:{self.port}",
            "in_flight": len(self.flights),
        }


def no_retries(session: aiohttp.ClientSession) -> None:
    """aiohttp (3.11 on) sends a GET, HEAD, PUT, DELETE, OPTIONS or TRACE again, once, when the server closes the
    connection without answering; the proxy passes on what happened instead, and counts it (reset). aiohttp has no
    public switch: its own test client turns this attribute off the same way."""
    session._retry_connection = False


def in_rotation(member: Member, behaviour: Behaviour) -> bool:
    if member.weight <= 0:
        return False
    if member.status == "Removing":
        return behaviour.removing_gets_requests
    return member.status in ("Available", "Configuring")


def address(member: Member, networks: Iterable[str]) -> str | None:
    """The IP the proxy connects to: an Ip server's ServerId, any other's ServerIp; None if it has none, or one
    outside ``networks`` (the proxy connects to nothing else)."""
    raw = member.server_id if member.server_type == "Ip" else member.server_ip
    if not raw or member.port is None:
        return None
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if not any(ip in ipaddress.ip_network(n) for n in networks):
        return None
    return str(ip)


class DataPlane:
    def __init__(self, state: State) -> None:
        self.state = state
        self.listeners: dict[str, Listener] = {}
        self.traffic: dict[str, Traffic] = {}
        state.idle_since = self.idle_since

    # -- what the control plane asks ------------------------------------------------------------------------

    def idle_since(self, group_id: str, mid: str) -> float | None:
        """Since when a server of a group with a listener has had no request in flight (0.0: it never had one);
        None while one is in flight, or when the group has no listener (nothing is known of its connections)."""
        listener = self.listeners.get(group_id)
        if listener is None or any(f.member == mid for f in listener.flights):
            return None
        return listener.idle_from.get(mid, 0.0)

    # -- listeners ----------------------------------------------------------------------------------------------

    async def open(self, group_id: str, port: int = 0) -> tuple[Listener, bool]:
        """The group's listener, opened on 127.0.0.1:``port`` (0: a free one) unless it is open already."""
        existing = self.listeners.get(group_id)
        if existing is not None:
            return existing, False
        app = web.Application(client_max_size=16 * 1024 * 1024)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(listener, request)

        app.router.add_route("*", "/{tail:.*}", handle)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        bound = runner.addresses[0][1]
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),  # a new connection per request
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # never through an HTTP proxy from the environment
        )
        no_retries(session)
        listener = Listener(group_id=group_id, port=bound, runner=runner, session=session)
        self.listeners[group_id] = listener
        self.traffic.setdefault(group_id, Traffic())
        return listener, True

    async def close(self, group_id: str, why: str = "listener_closed") -> bool:
        """Closes a group's listener; requests still in flight are cut (counted, ``reason`` = ``why``)."""
        listener = self.listeners.pop(group_id, None)
        if listener is None:
            return False
        for flight in listener.flights:
            flight.closed = why  # each notices within a tick and answers; cleanup waits for them (1 s at most)
        await listener.runner.cleanup()
        await listener.session.close()
        return True

    async def close_all(self, why: str = "listener_closed") -> None:
        for group_id in list(self.listeners):
            await self.close(group_id, why)

    async def reset(self) -> None:
        await self.close_all("reset")
        self.traffic.clear()

    def view(self, group_id: str, since: float, until: float | None, detail: str) -> dict[str, Any] | None:
        traffic = self.traffic.get(group_id)
        listener = self.listeners.get(group_id)
        if traffic is None:
            return None
        out = traffic.view(since, until, detail, listener.in_flight() if listener else {})
        return {"server_group_id": group_id, "listener": listener.to_json() if listener else None, **out}

    # -- requests -----------------------------------------------------------------------------------------------

    async def handle(self, listener: Listener, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        at = time.time()  # from here to the pick nothing awaits: the state at ``at`` is the state the pick sees
        behaviour = self.state.behaviour
        self.state.advance(at)
        group = self.state.groups.get(listener.group_id)
        members = [m for m in group.members.values() if in_rotation(m, behaviour)] if group else []
        if not members:
            return self._fail(listener, Event(at=at, ended=time.time(), kind="no_server", status=503))
        member = listener.pick(members)
        mid = member_id(member)
        event = Event(at=at, ended=at, kind="ok", status=0, server_id=member.server_id, member=mid)
        event.routed_as = member.status
        host = address(member, behaviour.proxy_networks)
        if host is None or member.port is None:
            event.kind, event.reason = "unroutable", "no address the proxy may connect to (proxy_networks)"
            return self._fail(listener, event, time.time())
        event.backend = f"[{host}]:{member.port}" if ":" in host else f"{host}:{member.port}"
        flight = Flight(member=mid, at=at)
        listener.flights.add(flight)
        task = asyncio.create_task(self._send(listener, request, body, event.backend, behaviour))
        try:
            cut = await self._watch(listener, flight, task)
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
            listener.flights.discard(flight)
            self._landed(listener, mid, time.time())
        now = time.time()
        if cut is not None:
            event.reason = cut
            event.kind = "cut"
            return self._fail(listener, event, now)
        try:
            status, headers, data = task.result()
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: a server that never took the connection
            event.kind, event.reason = "timeout", "no connection within the connect timeout"
            return self._fail(listener, event, now)
        except TimeoutError:
            event.kind, event.reason = "timeout", "no whole answer within the request timeout"
            return self._fail(listener, event, now)
        except aiohttp.ClientConnectorError as exc:
            event.kind = "refused"
            code = exc.os_error.errno if exc.os_error is not None else None
            event.reason = errno.errorcode.get(code, str(exc)) if code else str(exc)
            return self._fail(listener, event, now)
        except (aiohttp.ClientError, OSError) as exc:
            event.kind, event.reason = "reset", type(exc).__name__
            return self._fail(listener, event, now)
        event.kind = "backend_5xx" if status >= 500 else "ok"
        event.status, event.ended = status, now
        self.traffic[listener.group_id].add(event)
        out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)
        out[SERVER_HEADER] = member.server_id
        out[BACKEND_HEADER] = event.backend
        return web.Response(status=status, body=data, headers=out)

    def _fail(self, listener: Listener, event: Event, now: float | None = None) -> web.Response:
        event.status = FAILURE_STATUS[event.kind]
        if now is not None:
            event.ended = now
        self.traffic.setdefault(listener.group_id, Traffic()).add(event)
        headers = {FAILURE_HEADER: event.kind}
        if event.server_id is not None:
            headers[SERVER_HEADER] = event.server_id
        if event.backend is not None:
            headers[BACKEND_HEADER] = event.backend
        return web.Response(
            status=event.status, text=f"alb-emulator proxy: {event.kind}\n", headers=headers, content_type="text/plain"
        )

    async def _send(
        self, listener: Listener, request: web.Request, body: bytes, backend: str, behaviour: Behaviour
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        forwarded = headers.get("X-Forwarded-For")
        client = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded}, {client}" if forwarded else client
        headers["X-Forwarded-Proto"] = request.scheme
        timeout = aiohttp.ClientTimeout(
            total=behaviour.proxy_request_timeout_seconds, connect=behaviour.proxy_connect_timeout_seconds
        )
        url = URL(f"http://{backend}{request.raw_path}", encoded=True)
        async with listener.session.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            allow_redirects=False,
            timeout=timeout,
        ) as response:
            return response.status, response.headers, await response.read()

    async def _watch(
        self, listener: Listener, flight: Flight, task: asyncio.Task[tuple[int, CIMultiDictProxy[str], bytes]]
    ) -> str | None:
        """Waits for the backend's answer, looking at the server's state every tick; the reason it is cut, or None."""
        while True:
            timeout = TICK_SECONDS
            if flight.deadline is not None:
                timeout = max(0.0, min(timeout, flight.deadline - time.time()))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if done:
                return None
            cut = self._cut(listener, flight, time.time())
            if cut is not None:
                return cut

    def _cut(self, listener: Listener, flight: Flight, now: float) -> str | None:
        """Why a request in flight must be cut now, or None."""
        if flight.closed is not None:
            return flight.closed
        if flight.finish:
            return None
        self.state.advance(now)
        group = self.state.groups.get(listener.group_id)
        if group is None:
            return "group_deleted"
        member = group.members.get(flight.member)
        if member is not None and member.status == "Draining" and flight.deadline is None:
            flight.deadline = member.drain_until
        if flight.deadline is not None:
            # Re-added while it drains, a server keeps its draining requests to the drain's end (the ALB guide).
            if now >= flight.deadline:
                return "drain_timeout"
            return None if member is not None else "drain_ended"
        if member is not None:
            return None
        record = next((r for r in reversed(group.history) if r["member"] == flight.member), None)
        ended = record["ended"] if record else None
        if ended == "no_draining":
            if self.state.behaviour.undrained_in_flight == "finish":
                flight.finish = True
                return None
            return "removed_without_draining"
        if ended == "drain_timeout":  # drained between two looks (a timeout of 0 or shorter than a tick)
            return "drain_timeout"
        return "drain_ended" if ended == "idle" else "gone"

    def _landed(self, listener: Listener, mid: str, now: float) -> None:
        """A request to ``mid`` is over: a server that drains and has none left in flight leaves the group now."""
        listener.idle_from[mid] = now
        if any(f.member == mid for f in listener.flights):
            return
        self.state.advance(now)  # may start a drain, which ends at once: no request in flight
        group = self.state.groups.get(listener.group_id)
        member = group.members.get(mid) if group else None
        if group and member and member.status == "Draining" and self.state.behaviour.drain_ends_when_idle:
            self.state.end_drain(group, member, now, "idle")


def group_listener_port(raw: Any) -> int:
    """The port a POST .../listener asks for: ``{"port": N}``, or none (0: a free one)."""
    if raw is None:
        return 0
    if not isinstance(raw, dict) or set(raw) - {"port"}:
        raise ValueError("a listener takes only port")
    port = raw.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("port must be a whole number from 0 to 65535")
    return port
