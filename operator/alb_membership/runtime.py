"""Everything the running operator owns: the HTTP session, ALB clients per region, job trackers, pipelines,
the reconciler, metrics and health endpoints. Built in kopf's startup handler, closed in its cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import ParamSpec

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from alb_membership.alb import quotas
from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import CredentialSource, DefaultChain
from alb_membership.alb.models import Server
from alb_membership.cluster.kube import Kube
from alb_membership.cluster.notices import Notices
from alb_membership.cluster.store import ClusterStore
from alb_membership.engine import census
from alb_membership.engine.antientropy import AntiEntropy
from alb_membership.engine.jobs import JobTracker
from alb_membership.engine.pipeline import PipelineSettings, Services
from alb_membership.engine.readiness import ReadinessGates
from alb_membership.engine.reconciler import Reconciler, ReconcilerSettings
from alb_membership.gate.review import Gate
from alb_membership.gate.tls import Bundle, Certificates, ServerTLS
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import GroupKey
from alb_membership.model.membership import PodView
from alb_membership.settings import Settings

P = ParamSpec("P")

log = logging.getLogger(__name__)
CERTIFICATE_CHECK_SECONDS = 60.0  # a Secret or configuration replaced by hand is followed within a minute
CA_BUNDLE_RETRY_SECONDS = 5.0
# A review on a token this replica does not know (the token rotated by the other replica) has the Secret read again
# before it is answered, but not more often than this: a stranger guessing tokens costs one GET per 5 s at most.
CERTIFICATE_RECHECK_SECONDS = 5.0


class Runtime:
    def __init__(self, settings: Settings, kube: Kube, credentials: CredentialSource, metrics: Metrics) -> None:
        self.settings = settings
        self.kube = kube
        self.credentials = credentials
        self.metrics = metrics
        self.session = aiohttp.ClientSession()
        self.notices = Notices(kube)
        self.pipeline_settings = PipelineSettings(
            batch_size=settings.batch_size, coalesce_seconds=settings.coalesce_seconds
        )
        self.reconciler = Reconciler(
            ReconcilerSettings(settings.region, settings.eni_annotation),
            self.services_for,
            kube,
            self.notices,
            metrics,
        )
        self.anti_entropy = AntiEntropy(self.reconciler, kube, self.clients_for, metrics, settings.anti_entropy_seconds)
        self.store = ClusterStore(
            kube.api,
            settings.namespaces,
            settings.eni_annotation,
            on_pod=self._counting_failures(self._pod_changed),
            on_slice=self._counting_failures(self.reconciler.endpoints_changed),
            on_relist=self.anti_entropy.soon,
        )
        self.reconciler.view = self.store
        metrics.watched_pods.set_function(self.store.pod_count)
        metrics.watch_events.set_function(self.store.event_count)
        metrics.resources_degraded.set_function(lambda: census.degraded(self.reconciler.resources.values()))
        metrics.track_pending(lambda: census.oldest_pending(self.reconciler.ledgers))
        self._store_task: asyncio.Task[None] | None = None
        self._certificates_task: asyncio.Task[None] | None = None
        self.gate = Gate(
            self.reconciler,
            self.store,
            self.clients_for,
            metrics,
            kube.budgets,
            slot_seconds=self.reconciler.settings.undo_after_seconds,  # an answer not admitted by then: undone
        )
        self._services: dict[str, Services] = {}
        self._anti_entropy_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set by kopf once it watches everything
        self._recheck = asyncio.Event()  # set when this replica starts leading: the configuration is its to keep
        self._reread_lock = asyncio.Lock()
        self._reread_at = -1e9
        self._certificates: tuple[Certificates, ServerTLS, Callable[[Bundle], None], Callable[[], bool]] | None = None
        self.standby = False  # True while another replica holds the Lease

    @classmethod
    async def create(cls, settings: Settings, metrics: Metrics | None = None) -> Runtime:
        return cls(settings, await Kube.connect(), DefaultChain(), metrics or Metrics())

    def services_for(self, region: str) -> Services:
        endpoint = self.settings.endpoint_for(region or None)
        services = self._services.get(endpoint.base_url)
        if services is None:
            client = AlbClient(
                self.session,
                endpoint,
                self.credentials,
                limiters=quotas.limiters(self.settings.api_rate_limit, self.settings.api_rate_period),
                observer=self.metrics.observe_call,
            )
            tracker = JobTracker(
                client,
                interval=self.settings.job_poll_seconds,
                on_error=self.metrics.internal_errors.labels("job-tracker").inc,
            )
            services = Services(client, tracker, self.metrics, self.notices, self.pipeline_settings)
            self._services[endpoint.base_url] = services
        return services

    def clients_for(self, region: str) -> AlbClient:
        return self.services_for(region).client

    async def _read_group(self, key: GroupKey, servers: list[Server]) -> dict[Server, tuple[str, int | None]]:
        listed = await self.clients_for(key[0]).listed_servers(key[1], servers)
        return {s: (listed[s].status, listed[s].weight) if s in listed else ("Absent", None) for s in servers}

    def start_watching(self) -> None:
        """From process start, leader or not: a standby's view is current when it takes over."""
        self._store_task = asyncio.create_task(self.store.run(), name="store")

    def _counting_failures(self, handle: Callable[P, None]) -> Callable[P, None]:
        """A watch event the engine fails on is logged and counted, and the watch goes on (cluster/informer.py)."""

        def counted(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                handle(*args, **kwargs)
            except Exception:
                self.metrics.internal_errors.labels("watch-event").inc()
                raise

        return counted

    def _pod_changed(self, old: PodView | None, new: PodView | None) -> None:
        if old is not None and (new is None or new.uid != old.uid):
            # Gone, or replaced under the same name (a StatefulSet's pod, seen across a relist): the old one left.
            self.reconciler.pod_changed(old, deleted=True)
        if new is not None:
            self.reconciler.pod_changed(new, deleted=False)

    def keep_certificates(
        self,
        certificates: Certificates,
        tls: ServerTLS,
        use: Callable[[Bundle], None],
        leading: Callable[[], bool],
    ) -> None:
        """Follows the Secret and the webhook configuration: renews the certificate (a month before it expires)
        into the server's TLS (a new CA replaces the old one there), and uses a new CA and path token for
        forwarding and hearing (a Secret replaced by hand, a rotation). The leader alone keeps the configuration's
        caBundle and path in step: the configuration never names a token the leader does not hear (a new replica
        starting beside an older leader, a Secret made again)."""
        self._certificates = (certificates, tls, use, leading)

        async def renew() -> None:
            while True:
                pending = leading() and not certificates.ca_bundle_written  # the configuration was not there yet
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._recheck.wait(), CA_BUNDLE_RETRY_SECONDS if pending else CERTIFICATE_CHECK_SECONDS
                    )
                self._recheck.clear()
                try:
                    await self._follow(await certificates.ensure())
                except Exception as exc:  # the current certificate is good for a month more
                    log.warning("webhook certificate not renewed (%s: %s)", type(exc).__name__, exc)
                    self.metrics.internal_errors.labels("webhook-tls").inc()

        self._certificates_task = asyncio.create_task(renew(), name="webhook-certificates")

    async def _follow(self, bundle: Bundle) -> None:
        """Hears and serves ``bundle``; then, as the leader, writes it into the configuration."""
        assert self._certificates is not None
        certificates, tls, use, leading = self._certificates
        tls.use(bundle)
        use(bundle)
        if leading():
            await certificates.configure(bundle)

    def certificates_now(self) -> None:
        """Check the Secret and (as the leader) the configuration at once: this replica just took the Lease."""
        self._recheck.set()

    async def reread_certificates(self) -> None:
        """Read the Secret again now, unless that was done less than CERTIFICATE_RECHECK_SECONDS ago: a review came
        with a path token this replica does not hear, or the leader refused this replica's. Concurrent callers
        share one read."""
        if self._certificates is None:
            return
        certificates = self._certificates[0]
        async with self._reread_lock:
            now = asyncio.get_running_loop().time()
            if now - self._reread_at < CERTIFICATE_RECHECK_SECONDS:
                return
            self._reread_at = now
            await self._follow(await certificates.ensure())

    def start_work(self) -> None:
        self.reconciler.readiness = ReadinessGates(
            self.kube.set_pod_condition, self._read_group, self.reconciler.group_read, self.metrics
        )
        self.reconciler.confirm_live = self.kube.pod_live
        self._anti_entropy_task = asyncio.create_task(self.anti_entropy.run(self.ready), name="anti-entropy")

    async def stop_work(self) -> None:
        """Stops the pipelines, job trackers and pending status writes (kopf waits for such tasks otherwise).
        Whatever was in flight is in status already and the next operator sends it again. From here on, events
        still arriving (the watches run until the process ends) change nothing."""
        self.reconciler.stopped = True
        self.metrics.leader.set(0)
        if self.reconciler.readiness is not None:
            await self.reconciler.readiness.close()
        if self._anti_entropy_task is not None:
            self._anti_entropy_task.cancel()
            await asyncio.gather(self._anti_entropy_task, return_exceptions=True)
        for pipeline in self.reconciler.pipelines.values():
            await pipeline.close()
        for services in self._services.values():
            await services.tracker.close()
        await self.reconciler.writer.close()
        await self.notices.close()

    async def stop_watching(self) -> None:
        """Ends the watches (the store's task and the informers it runs); the store keeps what it holds."""
        if self._store_task is not None:
            self._store_task.cancel()
            await asyncio.gather(self._store_task, return_exceptions=True)

    async def close(self) -> None:
        await self.gate.close()
        for task in (self._store_task, self._certificates_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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
            # A standby replica whose watches have listed everything is ready: ready to take over at once, which
            # is its whole job.
            ready = self.store.synced.is_set() and (self.standby or self.ready.is_set())
            return web.json_response({"ready": ready, "leader": not self.standby}, status=200 if ready else 503)

        app = web.Application()
        app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
        return app
