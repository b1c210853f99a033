"""``alb-membership-operator run``: the operator process."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import kopf
from aiohttp import web

from alb_membership import handlers
from alb_membership.leader import LeaderElector, LeaseSettings
from alb_membership.runtime import Runtime
from alb_membership.settings import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    runtime = await Runtime.create(settings)
    site_runner = None
    if settings.metrics_port:
        site_runner = web.AppRunner(runtime.web_app(), access_log=None)
        await site_runner.setup()
        await web.TCPSite(site_runner, settings.metrics_address, settings.metrics_port).start()
        log.info(
            "metrics and probes on %s:%d (/metrics /healthz /readyz)", settings.metrics_address, settings.metrics_port
        )
    elector = None
    try:
        if settings.leader_elect:
            identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
            elector = LeaderElector(
                runtime.kube.api,
                LeaseSettings(settings.leader_election_namespace, settings.leader_election_name),
                identity,
            )
            runtime.standby = True
            await elector.acquire()
            runtime.standby = False
        runtime.metrics.leader.set(1)
        operator = asyncio.create_task(
            kopf.operator(
                registry=handlers.registry,
                memo=kopf.Memo(runtime=runtime),
                standalone=True,  # one active replica is the Lease's job, not kopf peering's
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                ready_flag=runtime.ready,
            )
        )
        if elector is None:
            await operator
            return
        keeper = asyncio.create_task(elector.keep())
        done, _ = await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
        if keeper in done:
            # Another replica may act from now on: stop at once rather than after a graceful shutdown.
            log.error("lost leadership (%s); exiting", keeper.exception())
            logging.shutdown()
            os._exit(1)
        keeper.cancel()
        await operator
    finally:
        if elector is not None:
            await elector.release()  # before the client closes: a standby takes over at once
        await runtime.close()
        if site_runner is not None:
            await site_runner.cleanup()


def run(settings: Settings) -> int:
    kopf.configure(log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(settings))
    return 0
