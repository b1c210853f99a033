"""Everything the running operator owns: the HTTP session, ALB clients per region, job trackers, pipelines,
the reconciler, metrics and health endpoints. Built in kopf's startup handler, closed in its cleanup."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import CredentialSource, DefaultChain
from alb_membership.alb.ratelimit import SlidingWindowLimiter
from alb_membership.jobs import JobTracker
from alb_membership.kube import Kube
from alb_membership.metrics import Metrics
from alb_membership.pipeline import GroupPipeline, PipelineSettings, Services, set_health
from alb_membership.reconciler import Reconciler
from alb_membership.settings import Settings
from alb_membership.state import MembershipState
from alb_membership.status_writer import StatusWriter

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, kube: Kube, credentials: CredentialSource, metrics: Metrics) -> None:
        self.settings = settings
        self.kube = kube
        self.credentials = credentials
        self.metrics = metrics
        self.session = aiohttp.ClientSession()
        self.writer = StatusWriter(kube)
        self.pipeline_settings = PipelineSettings(
            batch_size=settings.batch_size, coalesce_seconds=settings.coalesce_seconds
        )
        self.reconciler = Reconciler(self.writer, self.pipeline_for, self._warn, settings.eni_annotation)
        self._services: dict[str, Services] = {}
        self._pipelines: dict[tuple[str, str], GroupPipeline] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()  # set by kopf once it watches everything
        self.standby = False  # True while another replica holds the Lease

    @classmethod
    async def create(cls, settings: Settings, metrics: Metrics | None = None) -> Runtime:
        return cls(settings, await Kube.connect(), DefaultChain(), metrics or Metrics())

    def services_for(self, region: str | None) -> Services:
        endpoint = self.settings.endpoint_for(region)
        services = self._services.get(endpoint.base_url)
        if services is None:
            limiter = SlidingWindowLimiter(self.settings.api_rate_limit, self.settings.api_rate_period)
            client = AlbClient(
                self.session,
                endpoint,
                self.credentials,
                limiters={"RemoveServersFromServerGroup": limiter},
                observer=self.metrics.observe_call,
            )
            services = Services(
                client,
                JobTracker(client, interval=self.settings.job_poll_seconds),
                self.writer,
                self.kube,
                self.metrics,
                self.pipeline_settings,
            )
            self._services[endpoint.base_url] = services
        return services

    def pipeline_for(self, state: MembershipState) -> GroupPipeline:
        key = (state.spec.region or self.settings.region or "", state.spec.server_group_id)
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            pipeline = self._pipelines[key] = GroupPipeline(key[1], self.services_for(key[0] or None))
        return pipeline

    def _warn(self, state: MembershipState, reason: str, message: str) -> None:
        task = asyncio.create_task(self.kube.event(state.ref, "Warning", reason, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def unusable(self, state: MembershipState, reason: str, message: str) -> None:
        set_health(state, (reason, message))
        self.writer.soon(state)
        self._warn(state, reason, message)

    async def stop_work(self) -> None:
        """Stops the pipelines, job trackers and pending status writes (kopf waits for such tasks otherwise).
        Whatever was in flight is in status already and the next operator sends it again."""
        for pipeline in self._pipelines.values():
            await pipeline.close()
        for services in self._services.values():
            await services.tracker.close()
        await self.writer.close()

    async def close(self) -> None:
        await self.session.close()
        await self.kube.close()

    # -- /metrics, /healthz, /readyz ----------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def readyz(_: web.Request) -> web.Response:
            # A standby replica is ready: ready to take over, which is its whole job.
            ready = self.standby or self.ready.is_set()
            return web.json_response({"ready": ready, "leader": not self.standby}, status=200 if ready else 503)

        app = web.Application()
        app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
        return app
