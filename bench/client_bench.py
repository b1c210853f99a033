"""Micro-benchmarks of the ALB client: ACS3 signing (ours beside the official SDK's, as the baseline) and
RemoveServersFromServerGroup calls per second against the emulator (jobs finish at once, no flow control)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alibabacloud_tea_openapi.utils import Utils as SdkUtils
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, server, start_emulator

from alb_membership.alb import request as wire
from alb_membership.alb import signing
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, StaticCredentials
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.models import Server

CREDS = Credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
QUERY = {
    "ServerGroupId": "sgp-bench0000001",
    "ClientToken": "albm-x",
    **wire.flatten("Servers", [Server("Ip", f"10.0.0.{i}", 8080).to_api() for i in range(40)]),
}


def signing_rates(runs: int, number: int) -> tuple[float, float]:
    signed = wire.sign("RemoveServersFromServerGroup", QUERY, {}, "alb.cn-hangzhou.aliyuncs.com", CREDS)
    headers = {k: v for k, v in signed.headers.items() if k != "authorization"}
    body_hash = headers["x-acs-content-sha256"]
    request = SimpleNamespace(pathname="/", query=QUERY, headers=headers, method="POST")
    ours = [
        number
        / timeit.timeit(
            lambda: signing.authorization("AK", "secret", "POST", "/", QUERY, headers, body_hash), number=number
        )
        for _ in range(runs)
    ]
    sdk = [
        number
        / timeit.timeit(
            lambda: SdkUtils.get_authorization(request, "ACS3-HMAC-SHA256", body_hash, "AK", "secret"), number=number
        )
        for _ in range(runs)
    ]
    return statistics.median(ours), statistics.median(sdk)


async def removal_rate(url: str, calls: int) -> float:
    async with aiohttp.ClientSession() as session:
        client = AlbClient(session, Endpoint.from_url(url), StaticCredentials(CREDS))
        start = time.monotonic()
        for i in range(calls):  # one group: calls are sequential, as the operator sends them
            await client.remove_servers(
                "sgp-bench0000001", [Server("Ip", f"10.{i // 62500}.{i // 250 % 250}.{i % 250}", 8080)], f"bench-{i}"
            )
        return calls / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    ours, sdk = signing_rates(args.runs, 5000)
    print(
        f"ACS3 signing of a 40-server removal: ours {ours:,.0f}/s, official SDK {sdk:,.0f}/s "
        f"(ratio {ours / sdk:.2f}), median of {args.runs}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        emulator = start_emulator(Path(tmp), None)
        try:
            emulator.admin("PUT", "behaviour", {"job_seconds": 0})
            rates = []
            for _ in range(args.runs):
                emulator.admin("POST", "reset")
                emulator.add_group(
                    "sgp-bench0000001",
                    [server(f"10.{i // 62500}.{i // 250 % 250}.{i % 250}") for i in range(args.calls)],
                )
                rates.append(asyncio.run(removal_rate(emulator.url, args.calls)))
            print(
                f"RemoveServersFromServerGroup through the client: median {statistics.median(rates):,.0f} calls/s "
                f"over {args.runs} runs of {args.calls} sequential calls ({', '.join(f'{r:,.0f}' for r in rates)})"
            )
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
