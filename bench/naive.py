"""The naive baseline: how existing controllers take pods out of ALB server groups.

One RemoveServersFromServerGroup call per terminating pod as soon as it is seen, no coalescing, no ClientToken,
a fixed 1 s wait before retrying any retryable error, and each job polled on its own every second. It uses the
project's ALB client for signing and transport only (its own retries switched off), so that the comparison is
about the strategy, not about HTTP code.

    python bench/naive.py --endpoint URL --namespace NS --selector app=web --port 8080 --group-label sgm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch

from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import DefaultChain
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import Server
from alb_membership.alb.retry import RetryPolicy

NO_RETRIES = RetryPolicy(max_attempts=1)


async def remove_one(alb: AlbClient, group: str, server: Server, stats: dict[str, int]) -> None:
    for _ in range(300):
        try:
            removal = await alb.remove_servers(group, [server], client_token="")
            break
        except AlbError as exc:
            if not exc.retryable:
                stats["failed"] += 1
                return
            stats["retries"] += 1
            await asyncio.sleep(1.0)
    else:
        stats["failed"] += 1
        return
    if removal.job_id is None:
        return
    while True:  # one poll per job per second
        await asyncio.sleep(1.0)
        try:
            job = (await alb.list_asyn_jobs([removal.job_id])).get(removal.job_id)
        except AlbError:
            stats["retries"] += 1
            continue
        if job is not None and job.status != "Processing":
            stats["done"] += 1
            return


async def run(args: argparse.Namespace) -> None:
    await config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    stats = {"done": 0, "failed": 0, "retries": 0}
    seen: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as session:
        alb = AlbClient(session, Endpoint.from_url(args.endpoint), DefaultChain(), retry=NO_RETRIES)

        async def watch_pods() -> None:
            w = watch.Watch()
            async for event in w.stream(core.list_namespaced_pod, args.namespace, label_selector=args.selector):
                pod: Any = event["object"]
                if pod.metadata.deletion_timestamp is None or not pod.status.pod_ip or pod.metadata.uid in seen:
                    continue
                seen.add(pod.metadata.uid)
                group = pod.metadata.labels.get(args.group_label)
                task = asyncio.create_task(remove_one(alb, group, Server("Ip", pod.status.pod_ip, args.port), stats))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        watcher = asyncio.create_task(watch_pods())
        print("naive controller watching", flush=True)
        await stop.wait()
        watcher.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(watcher, *tasks, return_exceptions=True)
    await api.close()
    print(json.dumps(stats), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--selector", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--group-label", default="bench-group", help="pod label naming the pod's server group")
    args = parser.parse_args()
    os.environ.setdefault("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
