"""``python -m alb_emulator --listen 127.0.0.1:PORT [--config FILE]``: run the local ALB API emulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from alb_emulator.server import ADMIN, Emulator
from alb_emulator.state import HARD_LINE_LIMIT


def load_config(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the configuration must be a mapping")
    return data


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, not {value!r}")
    return host or "127.0.0.1", int(port)


async def serve(args: argparse.Namespace) -> None:
    emulator = Emulator(state_file=args.state_file, seed=args.seed, clock_skew_seconds=args.clock_skew)
    if args.config:
        emulator.configure(load_config(args.config))
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    # aiohttp's own limits far above any behaviour.max_request_line: the emulator refuses long lines itself.
    runner = web.AppRunner(
        emulator.app(),
        access_log=None,
        handle_signals=False,
        max_line_size=HARD_LINE_LIMIT,
        max_field_size=HARD_LINE_LIMIT,
    )
    await runner.setup()
    host, port = args.listen
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    print(f"alb-emulator listening on {scheme}://{host}:{bound} (admin API: {ADMIN}/)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alb_emulator", description=__doc__)
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 0),
        help="HOST:PORT to listen on; port 0 picks a free one (default: 127.0.0.1:0)",
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON: credentials, server_groups, behaviour, faults")
    parser.add_argument("--state-file", type=Path, help="keep groups, jobs and tokens here across restarts")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    parser.add_argument("--seed", type=int, help="seed for job ids, failures and fault rates (reproducible runs)")
    parser.add_argument(
        "--clock-skew",
        type=float,
        default=900.0,
        help="seconds a signed request's date may differ from now (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError, TypeError) as exc:
        print(f"alb-emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
