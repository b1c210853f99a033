"""A TLS proxy in front of the local API server, for the operator alone, that can open a watch gap at will: while
the gap is open, watch streams pass nothing on (the events in it are lost, as in a real gap), and closing it ends
every watch with the API server's own answer for a resourceVersion too old (an ERROR event, code 410), so that
every watcher lists again. The chaos harness's forced watch relist.

It serves with the cluster's own certificate (valid for 127.0.0.1) on another port, so a copy of the kubeconfig
with that port is all the operator needs; requests and credentials pass through unchanged. It runs in a thread of
the test process, with its own event loop, and dies with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import web

from localcluster.cluster import free_port

T = TypeVar("T")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te", "trailer"}
)
GONE = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version (the chaos harness's watch gap)",
        "reason": "Expired",
        "code": 410,
    },
}


class ApiProxy:
    def __init__(self, upstream: str, pki: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self._pki = pki
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-proxy", daemon=True)
        self._watches: set[asyncio.Event] = set()  # one per open watch stream: set it to end that watch with 410
        self._stalled = False
        self.watches_ended = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, original: Path, into: Path) -> Path:
        """A copy of ``original`` that points at the proxy."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
        into.write_text(yaml.safe_dump(config))
        into.chmod(0o600)
        return into

    # -- control (from the test's thread) ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._run(self._start())

    def stop(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def open_gap(self) -> None:
        """From now on, watch streams pass nothing on."""
        self._loop.call_soon_threadsafe(setattr, self, "_stalled", True)

    def close_gap(self) -> int:
        """Ends every open watch with 410 Gone (what it missed is lost: its watcher must list again); how many."""
        return self._run(self._close_gap())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the proxy (on its own loop) -----------------------------------------------------------------------------

    async def _start(self) -> None:
        upstream_tls = ssl.create_default_context(cafile=str(self._pki / "ca.crt"))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_tls, limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(self._pki / "server.crt", self._pki / "server.key")
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=serving).start()

    async def _stop(self) -> None:
        await self._close_gap()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _close_gap(self) -> int:
        ended = list(self._watches)
        for stop in ended:
            stop.set()
        self._stalled = False
        await asyncio.sleep(0)
        return len(ended)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        watch = request.query.get("watch", "").lower() in ("true", "1")  # kubernetes_asyncio sends True
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                auto_decompress=False,
            )
        except (aiohttp.ClientError, OSError) as exc:  # the API server is down (restarting)
            return web.Response(status=502, text=f"api-proxy: {exc}")
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        try:
            await response.prepare(request)
            if watch and upstream.status == 200:
                await self._watch(upstream, response)
            else:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            # Either end went away mid-answer (the operator killed, the API server restarting): so does this one.
            upstream.close()
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.release()
        return response

    async def _watch(self, upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
        """Passes whole lines on (none while the gap is open), until the stream ends or the gap closes."""
        stop = asyncio.Event()
        self._watches.add(stop)
        stopping = asyncio.ensure_future(stop.wait())
        buffer = b""
        try:
            while True:
                reading = asyncio.ensure_future(upstream.content.readany())
                done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                    await response.write((json.dumps(GONE) + "\n").encode())
                    self.watches_ended += 1
                    upstream.close()
                    return
                chunk = reading.result()
                if not chunk:
                    return
                buffer += chunk
                lines, _, buffer = buffer.rpartition(b"\n")
                if lines and not self._stalled:
                    await response.write(lines + b"\n")
        finally:
            self._watches.discard(stop)
            stopping.cancel()
