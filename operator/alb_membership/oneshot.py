"""``alb-membership-operator remove-servers``: remove given servers from a group now (for runbooks)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

import aiohttp

from alb_membership.alb.batching import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, Batch, batches
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import DefaultChain
from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import Server
from alb_membership.engine.jobs import JobTracker
from alb_membership.settings import add_cloud_arguments

EXIT_CLOUD_ERROR, EXIT_JOB_FAILED = 1, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-group-id", required=True, help="the group, e.g. sgp-atstuj3rtop1234")
    parser.add_argument(
        "--server",
        dest="servers",
        action="append",
        required=True,
        type=Server.parse,
        metavar="TYPE:ID:PORT[:IP]",
        help="a server to remove, e.g. Ip:10.0.0.5:8080 or Eni:eni-bp1abc:80:10.0.0.5 (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only precheck (DryRun=true); nothing is removed")
    parser.add_argument(
        "--client-token",
        help="idempotency token (ASCII, at most 64); re-running with the same "
        "token cannot start a second job. Default: a new one, printed",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"servers per call, 1-{MAX_BATCH_SIZE} (default %(default)s)",
    )
    parser.add_argument("--wait", action="store_true", help="follow each job until it succeeds or fails")
    add_cloud_arguments(parser)


async def _remove(args: argparse.Namespace) -> int:
    endpoint = args.settings.endpoint_for(args.region)
    seed = args.client_token or f"cli-{uuid.uuid4()}"
    parts = batches(args.servers, seed=seed, size=args.batch_size)
    if args.client_token and len(parts) == 1:  # one call: it carries the token exactly as given
        parts = [Batch(parts[0].servers, args.client_token)]
    status = 0
    async with aiohttp.ClientSession() as session:
        client = AlbClient(session, endpoint, DefaultChain())
        tracker = JobTracker(client, interval=1.0)
        for part in parts:
            removal = await client.remove_servers(
                args.server_group_id, part.servers, part.client_token, dry_run=args.dry_run
            )
            line = {
                "Outcome": removal.outcome,
                "JobId": removal.job_id,
                "RequestId": removal.request_id,
                "ClientToken": part.client_token,
                "ServerGroupId": args.server_group_id,
                "Servers": [str(s) for s in part.servers],
            }
            if args.wait and removal.job_id:
                job = await tracker.wait(removal.job_id)
                line["JobStatus"] = job.status
                if job.status != "Succeeded":
                    line["JobError"] = f"{job.error_code}: {job.error_message}"
                    status = EXIT_JOB_FAILED
            print(json.dumps(line), flush=True)
    return status


def remove_servers(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_remove(args))
    except AlbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CLOUD_ERROR
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CLOUD_ERROR
