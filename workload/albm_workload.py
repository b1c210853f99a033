"""The test workload: a tiny HTTP server for pods on the local cluster's real nodes (Python's standard library only).

    GET /            200, the body is the pod's name and a newline (header X-Pod-Name too)
    GET /?delay=1.5  the same after 1.5 s (a long request; at most MAX_DELAY seconds)
    GET /ready       200 while it takes traffic; 503 before READY_AFTER_SECONDS and once it is draining
    GET /healthz     200 while the process runs
    GET /stats       JSON: requests served, in flight, served while draining, draining or not

Environment: POD_NAME (the downward API's metadata.name; default: the host name), PORT (8080), READY_AFTER_SECONDS
(0), IDLE_TIMEOUT_SECONDS (30: a keep-alive connection idle that long is closed).

SIGTERM (or SIGINT) starts a drain, as Go's http.Server.Shutdown does: the listening socket closes (new connections
are refused), idle keep-alive connections are closed, the requests in flight finish (their responses carry
``Connection: close`` and ``X-Draining: 1``), then the process exits 0. The kubelet's grace period bounds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from types import FrameType

MAX_DELAY = 300.0


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Server(ThreadingMixIn, HTTPServer):
    # Not daemon threads, and server_close() joins them: the requests in flight finish before the process exits.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    # The listen backlog: socketserver's 5 drops new connections while the process stalls for a moment, and their
    # clients retry a second later (on a busy node, often after SIGTERM: refused). A web server's usual figure.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], pod: str, ready_after: float, idle_timeout: float) -> None:
        super().__init__(address, Handler)
        self.pod = pod
        self.ready_at = time.monotonic() + ready_after
        self.idle_timeout = idle_timeout
        self.lock = threading.Lock()
        self.idle: set[socket.socket] = set()  # keep-alive connections waiting for their next request
        self.draining = False
        self.in_flight = 0
        self.served = 0
        self.served_draining = 0

    def drain(self) -> None:
        """Refuses new connections and closes the idle ones; the busy ones close after their response."""
        with self.lock:
            if self.draining:
                return
            self.draining = True
            idle, in_flight = list(self.idle), self.in_flight
        log(f"draining: {in_flight} request(s) in flight, {len(idle)} idle connection(s) closed")
        for conn in idle:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        # shutdown() waits for serve_forever() to return, so not from the thread that runs it.
        threading.Thread(target=self.shutdown, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)  # an idle keep-alive connection closes after it
        self.requests = 0

    def handle_one_request(self) -> None:
        srv = self.server
        with srv.lock:
            # A keep-alive connection closes between requests once draining; one accepted while the listener was
            # closing gets its one request served (with Connection: close).
            if srv.draining and self.requests:
                self.close_connection = True
                return
            srv.idle.add(self.connection)
        self.requests += 1
        try:
            super().handle_one_request()  # idle until the request line arrives; parse_request marks it busy
        finally:
            with srv.lock:
                srv.idle.discard(self.connection)

    def parse_request(self) -> bool:
        with self.server.lock:
            self.server.idle.discard(self.connection)
        return super().parse_request()

    def do_GET(self) -> None:
        srv = self.server
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            self._reply(200, "ok\n")
        elif url.path == "/ready":
            ready = not srv.draining and time.monotonic() >= srv.ready_at
            self._reply(200 if ready else 503, "ready\n" if ready else "not ready\n")
        elif url.path == "/stats":
            with srv.lock:
                stats = {
                    "pod": srv.pod,
                    "served": srv.served,
                    "in_flight": srv.in_flight,
                    "served_draining": srv.served_draining,
                    "draining": srv.draining,
                }
            self._reply(200, json.dumps(stats) + "\n", "application/json")
        elif url.path == "/":
            self._serve(urllib.parse.parse_qs(url.query))
        else:
            self._reply(404, "not found\n")

    def _serve(self, query: dict[str, list[str]]) -> None:
        srv = self.server
        try:
            delay = min(max(float(query.get("delay", ["0"])[0]), 0.0), MAX_DELAY)
        except ValueError:
            self._reply(400, "delay: a number of seconds\n")
            return
        with srv.lock:
            srv.in_flight += 1
        try:
            if delay:
                time.sleep(delay)
            with srv.lock:
                srv.served += 1
                srv.served_draining += srv.draining
            self._reply(200, srv.pod + "\n")
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _reply(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        draining = self.server.draining
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Pod-Name", self.server.pod)
        if draining:
            self.send_header("X-Draining", "1")
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would be most of the pod's log


def main() -> int:
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    port = int(os.environ.get("PORT", "8080"))
    server = Server(
        ("0.0.0.0", port),  # a pod's server listens on the pod's IP
        pod,
        float(os.environ.get("READY_AFTER_SECONDS", "0")),
        float(os.environ.get("IDLE_TIMEOUT_SECONDS", "30")),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log(f"{signal.Signals(signum).name}")
        server.drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"{pod} serving on port {server.server_address[1]}")
    server.serve_forever(poll_interval=0.05)
    server.server_close()  # closes the listening socket, then waits for the requests in flight
    log(f"exiting: served {server.served}, {server.served_draining} of them while draining")
    return 0


if __name__ == "__main__":
    sys.exit(main())
