"""``alb-membership-operator run``: the operator process."""

from __future__ import annotations

import asyncio
import logging

import kopf
from aiohttp import web

from alb_membership import handlers
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
    try:
        await kopf.operator(
            registry=handlers.registry,
            memo=kopf.Memo(runtime=runtime),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            ready_flag=runtime.ready,
        )
    finally:
        if site_runner is not None:
            await site_runner.cleanup()


def run(settings: Settings) -> int:
    kopf.configure(log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(settings))
    return 0
