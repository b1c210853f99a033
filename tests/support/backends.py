"""Small HTTP backends on 127.0.0.1 for the emulator's proxy, each in a thread of its own (so a test's event loop, or
a blocking call of the test, never holds them up).

A backend answers every request with its name, in the ``X-Pod-Name`` header and the body (as the workload image
does), and records when each request arrived and ended. ``?delay=S`` waits S seconds before answering;
``/status/N`` answers status N; ``/close`` closes the connection without answering. A backend whose ``draining`` is
true marks its answers ``X-Draining: 1``, as the workload does after its SIGTERM.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

POD_HEADER = "X-Pod-Name"
DRAINING_HEADER = "X-Draining"  # workload/albm_workload.py's mark (alb_emulator.loadgen records it)


@dataclass
class Hit:
    path: str
    arrived: float
    ended: float | None = None  # None while it is being answered, or if the answer could not be sent
    answered: bool = False


@dataclass
class Backend:
    name: str
    server: ThreadingHTTPServer | None = None
    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    draining: bool = False  # mark answers X-Draining: 1 (may be switched while it runs)

    def start(self, port: int = 0) -> Backend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                hit = Hit(path=self.path, arrived=time.time())
                with backend.lock:
                    backend.hits.append(hit)
                url = urlsplit(self.path)
                delay = float(parse_qs(url.query).get("delay", ["0"])[0])
                if delay:
                    time.sleep(delay)
                if url.path == "/close":
                    self.close_connection = True
                    self.connection.close()
                    return
                status = int(url.path.rsplit("/", 1)[1]) if url.path.startswith("/status/") else 200
                body = f"{backend.name}\n".encode()
                try:
                    self.send_response(status)
                    self.send_header(POD_HEADER, backend.name)
                    if backend.draining:
                        self.send_header(DRAINING_HEADER, "1")
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    hit.answered = True
                except OSError:  # the proxy cut the request
                    pass
                hit.ended = time.time()

            do_POST = do_GET

            def log_message(self, *_: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops listening: new connections are refused from now on."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def arrivals(self) -> list[float]:
        with self.lock:
            return [h.arrived for h in self.hits]

    def member(self, weight: int = 100) -> dict[str, Any]:
        """This backend as an Ip server of an emulator group (the admin API's form)."""
        return {"server_id": "127.0.0.1", "server_type": "Ip", "port": self.port, "weight": weight}


@contextlib.contextmanager
def backends(*names: str) -> Any:
    """Started backends, stopped at the end whatever happens."""
    started = [Backend(name).start() for name in names]
    try:
        yield started
    finally:
        for b in started:
            b.stop()
