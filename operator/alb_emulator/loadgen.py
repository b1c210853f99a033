"""A load generator for benchmarks against the emulator's proxy: a fixed rate, bounded in count and time, loopback only.

Open loop: request *i* is sent at ``start + i / rate`` whether or not earlier ones were answered (a slow backend
does not slow the load down), until ``count`` requests were sent or ``duration`` seconds passed, whichever comes
first; then it waits for those in flight (each has its own ``request_timeout``) and stops. So a run never lasts
longer than ``duration + request_timeout``. More than ``max_in_flight`` requests outstanding: the next is not sent
and is recorded as ``overload``, so the rate stays what was asked for and the shortfall shows.

Each request's record: when it was due and sent, its latency, the HTTP status (or the client-side error: refused,
reset, timeout, overload), which pod answered (the ``pod_header`` header, else a JSON body's ``pod`` or
``pod_name``), which server the proxy chose and the proxy's failure kind (``X-Emulator-*`` headers).

``python -m alb_emulator.loadgen http://127.0.0.1:PORT/ --rate 200 --count 2000 --duration 15 --out run.jsonl``
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from alb_emulator.dataplane import BACKEND_HEADER, FAILURE_HEADER, SERVER_HEADER, no_retries

MAX_RATE = 5_000.0  # requests per second
MAX_COUNT = 1_000_000
MAX_DURATION = 3_600.0  # seconds
MAX_BODY = 64 * 1024  # read at most this much of an answer to find the pod's name
DRAINING_HEADER = "X-Draining"  # workload/albm_workload.py marks the answers it sends after its SIGTERM


@dataclass(slots=True)
class Sample:
    index: int
    due: float  # Unix seconds: when the schedule said to send it
    sent: float  # when it was sent (its latency counts from here)
    latency_ms: float | None = None
    status: int | None = None  # None: no HTTP answer (see error)
    error: str | None = None  # refused | reset | timeout | overload
    pod: str | None = None
    server_id: str | None = None
    backend: str | None = None
    failure: str | None = None  # the proxy's X-Emulator-Failure
    draining: bool = False  # the answer was marked X-Draining: 1 (the workload answers so during its drain)

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 500


@dataclass
class LoadResult:
    url: str
    rate: float
    count: int
    duration: float
    started: float
    ended: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts, rate achieved, latency percentiles and who answered."""
        sent = [s for s in self.samples if s.error != "overload"]
        latencies = sorted(s.latency_ms for s in sent if s.latency_ms is not None and s.status is not None)
        span = (max(s.sent for s in sent) - min(s.sent for s in sent)) if len(sent) > 1 else 0.0

        def pct(p: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

        return {
            "url": self.url,
            "rate_asked": self.rate,
            "requests": len(self.samples),
            "sent": len(sent),
            # Rate over the sending span: n requests sent over (n - 1) intervals.
            "rate_achieved": round((len(sent) - 1) / span, 2) if span > 0 else None,
            "ok": sum(1 for s in self.samples if s.ok),
            "failed": sum(1 for s in self.samples if not s.ok),
            "by_status": dict(Counter(str(s.status) for s in self.samples if s.status is not None)),
            "by_error": dict(Counter(s.error for s in self.samples if s.error is not None)),
            "by_failure": dict(Counter(s.failure for s in self.samples if s.failure is not None)),
            "by_pod": dict(Counter(s.pod for s in self.samples if s.pod is not None)),
            "answered_draining": sum(1 for s in self.samples if s.draining),
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": latencies[-1] if latencies else None},
            "started": self.started,
            "ended": self.ended,
            "seconds": round(self.ended - self.started, 3),
        }

    def write_jsonl(self, path: Path) -> None:
        with path.open("w") as out:
            for s in self.samples:
                out.write(json.dumps(asdict(s)) + "\n")


def check_loopback(url: str) -> URL:
    """The URL, if it is http to a loopback address (127.0.0.0/8, ::1 or localhost); ValueError otherwise. Nothing is
    resolved: any other name is refused."""
    parsed = URL(url)
    if parsed.scheme != "http" or not parsed.host:
        raise ValueError(f"{url!r}: the load generator takes http://127.0.0.1:PORT/... only")
    if parsed.host == "localhost":
        return parsed.with_host("127.0.0.1")
    try:
        loopback = ipaddress.ip_address(parsed.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{url!r}: the load generator sends to loopback addresses only, not {parsed.host}")
    return parsed


def _pod(headers: Any, body: bytes, pod_header: str) -> str | None:
    name = headers.get(pod_header)
    if name:
        return str(name)
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("pod", "pod_name"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return None


async def _one(
    session: aiohttp.ClientSession, url: URL, sample: Sample, request_timeout: float, pod_header: str, method: str
) -> None:
    started = time.monotonic()
    try:
        async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=request_timeout)) as resp:
            body = await resp.content.read(MAX_BODY)
            sample.status = resp.status
            sample.pod = _pod(resp.headers, body, pod_header)
            sample.server_id = resp.headers.get(SERVER_HEADER)
            sample.backend = resp.headers.get(BACKEND_HEADER)
            sample.failure = resp.headers.get(FAILURE_HEADER)
            sample.draining = resp.headers.get(DRAINING_HEADER) == "1"
    except TimeoutError:
        sample.error = "timeout"
    except aiohttp.ClientConnectorError:
        sample.error = "refused"
    except (aiohttp.ClientError, OSError):
        sample.error = "reset"
    sample.latency_ms = round((time.monotonic() - started) * 1000, 3)


async def run_load(
    url: str,
    rate: float = 200.0,
    count: int = 2000,
    duration: float = 15.0,
    request_timeout: float = 5.0,
    max_in_flight: int = 1000,
    pod_header: str = "X-Pod-Name",
    method: str = "GET",
    until: Callable[[], bool] | None = None,
) -> LoadResult:
    """Sends ``rate`` requests a second to ``url`` (loopback only) until ``count`` were sent, ``duration``
    seconds passed or ``until()`` is true (asked before each request: a caller's stop); returns every request's
    record once the last one is answered or timed out."""
    target = check_loopback(url)
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be above 0 and at most {MAX_RATE:g} requests per second")
    if not 0 < count <= MAX_COUNT:
        raise ValueError(f"count must be from 1 to {MAX_COUNT}")
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be above 0 and at most {MAX_DURATION:g} seconds")
    if not 0 < request_timeout <= 600:
        raise ValueError("request_timeout must be above 0 and at most 600 seconds")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    result = LoadResult(url=str(target), rate=rate, count=count, duration=duration, started=time.time())
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=True)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        no_retries(session)  # a client that tries once: what it got is what it counts
        wall0, mono0 = time.time(), time.monotonic()
        for i in range(count):
            offset = i / rate
            if offset >= duration or (until is not None and until()):
                break
            delay = mono0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sample = Sample(index=i, due=wall0 + offset, sent=time.time())
            result.samples.append(sample)
            if len(tasks) >= max_in_flight:
                sample.error = "overload"
                continue
            task = asyncio.create_task(_one(session, target, sample, request_timeout, pod_header, method))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=request_timeout + 1.0)
        left = list(tasks)  # requests their own timeout did not end (should not happen)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
    result.ended = time.time()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alb_emulator.loadgen", description=__doc__)
    parser.add_argument("url", help="the proxy's loopback URL, e.g. http://127.0.0.1:PORT/")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default: %(default)s)")
    parser.add_argument("--count", type=int, default=2000, help="at most this many requests (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=15.0, help="at most this many seconds of sending")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds (default: %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--pod-header", default="X-Pod-Name", help="the header that names the answering pod")
    parser.add_argument("--out", type=Path, help="write every request's record here, one JSON object a line")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(
            run_load(
                args.url,
                rate=args.rate,
                count=args.count,
                duration=args.duration,
                request_timeout=args.timeout,
                max_in_flight=args.max_in_flight,
                pod_header=args.pod_header,
            )
        )
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if args.out:
        result.write_jsonl(args.out)
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
