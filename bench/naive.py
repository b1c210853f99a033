"""The naive baseline: how existing controllers take pods out of ALB server groups.

One RemoveServersFromServerGroup call per terminating pod as soon as it is seen, no coalescing, no ClientToken,
a fixed 1 s wait before retrying any retryable error, and each job polled on its own every second. It uses the
project's ALB client for signing and transport only (its own retries switched off), so that the comparison is
about the strategy, not about HTTP code.

For bench/traffic.py it also stands in for the controller that puts pods into a group where the operator does not
(remove-only modes): ``--register`` adds each pod's server once the pod is Ready; ``--remove-on deleted`` removes a
server only once its pod is gone from the API (a group kept in step with the pod list, after the fact), ``never``
leaves removals to someone else. The stand-in's own changes go one call per group at a time, each taking all that
wait of its kind, so that it does not crowd the group for the controller measured beside it.

    python bench/naive.py --endpoint URL --namespace NS --selector app=web --port 8080 --group-label sgm
    python bench/naive.py ... --register --remove-on never
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections.abc import Coroutine
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch

from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import DefaultChain
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import AddAnswer, RemoveAnswer, Server
from alb_membership.alb.retry import RetryPolicy

NO_RETRIES = RetryPolicy(max_attempts=1)
REGISTRAR_COALESCE_SECONDS = 0.5


async def one_change(alb: AlbClient, group: str, servers: list[Server], add: bool, stats: dict[str, int]) -> None:
    """One call, retried every second while the answer is retryable, then its job polled."""
    for _ in range(300):
        try:
            if add:
                answer: AddAnswer | RemoveAnswer = await alb.add_servers(group, servers, client_token="")
            else:
                answer = await alb.remove_servers(group, servers, client_token="")
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
    if answer.job_id is None:
        return
    while True:  # one poll per job per second
        await asyncio.sleep(1.0)
        try:
            job = (await alb.list_asyn_jobs([answer.job_id])).get(answer.job_id)
        except AlbError:
            stats["retries"] += 1
            continue
        if job is not None and job.status != "Processing":
            outcome = ("added" if add else "done") if job.status == "Succeeded" else "failed"
            stats[outcome] += len(servers)
            return


def ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def change_for(event_type: str, pod: Any, register: bool, remove_on: str) -> str | None:
    """ "add", "remove" or nothing, for one watch event of a pod."""
    if event_type == "DELETED":
        return "remove" if remove_on == "deleted" else None
    if pod.metadata.deletion_timestamp is not None:
        return "remove" if remove_on == "terminating" else None
    return "add" if register and ready(pod) else None


async def run(args: argparse.Namespace) -> None:
    await config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    stats = {"done": 0, "added": 0, "failed": 0, "retries": 0}
    seen: set[tuple[str, str]] = set()  # (change, pod UID): each change once per pod
    tasks: set[asyncio.Task[None]] = set()
    registrar: dict[tuple[str, bool], list[Server]] = {}  # (group, add) -> servers waiting for the next call
    calling: set[str] = set()  # groups with a call of the registrar out
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as session:
        alb = AlbClient(session, Endpoint.from_url(args.endpoint), DefaultChain(), retry=NO_RETRIES)

        async def watch_pods() -> None:
            w = watch.Watch()
            async for event in w.stream(core.list_namespaced_pod, args.namespace, label_selector=args.selector):
                pod: Any = event["object"]
                change = change_for(event["type"], pod, args.register, args.remove_on)
                if change is None or not pod.status.pod_ip or (change, pod.metadata.uid) in seen:
                    continue
                seen.add((change, pod.metadata.uid))
                group = pod.metadata.labels.get(args.group_label)
                server = Server("Ip", pod.status.pod_ip, args.port)
                pending_add = registrar.get((group, True), [])
                if change == "remove" and server in pending_add:
                    pending_add.remove(server)  # its pod went before the add was sent: the add is not sent
                    if not pending_add:
                        del registrar[(group, True)]
                    if args.remove_on != "terminating":
                        continue  # the registrar's own: nothing to remove either
                if change == "remove" and args.remove_on == "terminating":
                    start(one_change(alb, group, [server], False, stats))  # the baseline: at once, one each
                else:
                    registrar.setdefault((group, change == "add"), []).append(server)

        async def registrar_calls() -> None:
            """The registrar's own changes: per group one call at a time (removals first), taking every change of its
            kind that waits, at most every 0.5 s; a registrar that does not crowd the group's one job at a time and
            its flow control (it only stands in for one)."""
            while True:
                await asyncio.sleep(REGISTRAR_COALESCE_SECONDS)
                for group in {g for g, _ in registrar} - calling:
                    add = (group, False) not in registrar
                    calling.add(group)
                    start(registrar_call(group, add, registrar.pop((group, add))))

        async def registrar_call(group: str, add: bool, servers: list[Server]) -> None:
            try:
                await one_change(alb, group, servers, add, stats)
            finally:
                calling.discard(group)

        def start(call: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(call)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        watcher = asyncio.create_task(watch_pods())
        start(registrar_calls())
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
    parser.add_argument("--register", action="store_true", help="also add each pod's server once the pod is Ready")
    parser.add_argument(
        "--remove-on",
        choices=("terminating", "deleted", "never"),
        default="terminating",
        help="remove a pod's server when the pod starts terminating (the baseline), once it is gone, or never",
    )
    args = parser.parse_args()
    os.environ.setdefault("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
