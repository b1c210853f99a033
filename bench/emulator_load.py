"""How many signed ALB API requests per second the emulator serves on loopback.

The emulator runs as its own process; this process is the load (aiohttp, ``--concurrency`` requests in flight,
each signed with ACS3 like the SDK). Bounded: ``--seconds`` per run, ``--runs`` runs, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, server, start_emulator

from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, StaticCredentials
from alb_membership.alb.endpoints import Endpoint


async def one_run(url: str, seconds: float, concurrency: int) -> tuple[float, int]:
    done = 0
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = AlbClient(
            session, Endpoint.from_url(url), StaticCredentials(Credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET))
        )

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    await client.call(
                        "ListServerGroupServers", {"ServerGroupId": "sgp-load00000001", "MaxResults": "20"}
                    )
                    done += 1
                except Exception:
                    errors += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - start), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        emulator = start_emulator(Path(tmp))
        try:
            emulator.add_group("sgp-load00000001", [server(f"10.0.{i // 250}.{i % 250}") for i in range(20)])
            rates = []
            for n in range(args.runs):
                rate, errors = asyncio.run(one_run(emulator.url, args.seconds, args.concurrency))
                rates.append(rate)
                print(f"run {n + 1}: {rate:,.0f} signed requests/s ({errors} errors)")
            print(
                f"median of {args.runs} runs: {statistics.median(rates):,.0f} signed requests/s "
                f"(concurrency {args.concurrency}, {args.seconds:.0f}s each)"
            )
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
