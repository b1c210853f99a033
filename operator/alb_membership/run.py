"""``alb-membership-operator run``: the operator process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Collection, Iterator
from typing import Any

import kopf
from aiohttp import web

from alb_membership import handlers
from alb_membership.cluster.leader import LeaderElector, LeaseSettings
from alb_membership.gate.tls import REVIEW_PATH, Certificates, ServerTLS
from alb_membership.gate.webhook import LeaderLookup, Webhook
from alb_membership.runtime import Runtime
from alb_membership.settings import Settings

log = logging.getLogger(__name__)


# The chart's terminationGracePeriodSeconds is 30: whatever hangs (an unreachable API server or cloud), the
# process is gone well before the kubelet's SIGKILL.
SHUTDOWN_DEADLINE_SECONDS = 20.0
# Reviews still in flight when the process stops are handed to the new leader; their answers get this long.
WEBHOOK_SHUTDOWN_SECONDS = 12.0
# After the Lease is lost, the webhook keeps serving until another replica holds the Lease (at most this long):
# reviews held here, and those the API server still sends here, go to the new leader rather than being dropped.
LOST_LEASE_SERVE_SECONDS = 8.0


class Shutdown:
    """SIGTERM/SIGINT: stop cleanly, and in any case exit within SHUTDOWN_DEADLINE_SECONDS. kopf installs its own
    handlers once it runs; ``install`` is called again after that, so these stay in charge (kopf stops through
    ``flag``)."""

    def __init__(self) -> None:
        self.flag = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._requested, sig)

    def _requested(self, sig: signal.Signals) -> None:
        self.request(f"{sig.name} received")

    def request(self, why: str, deadline: float = SHUTDOWN_DEADLINE_SECONDS) -> None:
        """Stop (a signal, or the Lease lost), exiting within ``deadline`` seconds in any case."""
        if self.flag.is_set():
            return
        log.info("%s: stopping (at most %.0fs)", why, deadline)
        self.flag.set()
        asyncio.get_running_loop().call_later(deadline, self._overdue)

    @staticmethod
    def _overdue() -> None:
        log.error("shutdown took too long; exiting now")
        logging.shutdown()
        os._exit(1)


async def _until(flag: asyncio.Event, work: Awaitable[None]) -> bool:
    """Runs ``work`` unless ``flag`` is set first (then cancels it); True when ``work`` finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(flag.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _reinstall_when_ready(ready: asyncio.Event, shutdown: Shutdown) -> None:
    await ready.wait()  # kopf has installed its own signal handlers by then
    shutdown.install()


async def _hand_over_on_shutdown(
    shutdown: Shutdown, runtime: Runtime, elector: LeaderElector, keeper: asyncio.Task[None]
) -> None:
    """On SIGTERM, stop acting and give the Lease up first; kopf's own shutdown, slower, follows. A standby
    acts within its poll interval instead of after this replica's whole shutdown."""
    await shutdown.flag.wait()
    keeper.cancel()  # no renewal may take the Lease back
    await runtime.stop_work()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(elector.release(), timeout=3)


async def _keep_leading(elector: LeaderElector, runtime: Runtime) -> None:
    """Renews the Lease; the moment it cannot (LeadershipLost, before the Lease can expire for the others), this
    replica stops acting, in the same step: nothing it does after that can overlap the next leader's work."""
    try:
        await elector.keep()
    except Exception:
        runtime.reconciler.stopped = True
        runtime.standby = True
        runtime.metrics.leader.set(0)
        raise


async def _until_another_leads(elector: LeaderElector, seconds: float) -> None:
    """Waits (at most ``seconds``) until the Lease names another replica's webhook: reviews this replica holds or
    still gets are handed to it meanwhile."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(Exception):
            await elector.observe()
            if elector.leader_url:
                return
        await asyncio.sleep(0.5)


async def _leader_url(elector: LeaderElector) -> str | None:
    """Where a review goes when this replica does not act: the Lease holder's webhook, read afresh (shared and
    rate-limited by LeaderLookup)."""
    await elector.observe()
    return elector.leader_url


async def _serve_webhook(
    settings: Settings, runtime: Runtime, elector: LeaderElector | None
) -> tuple[web.AppRunner, Webhook]:
    """The deletion gate's endpoint, on every replica from the start (a standby answers too)."""
    certificates = Certificates(
        runtime.kube.api,
        settings.leader_election_namespace,
        settings.webhook_secret,
        list(settings.webhook_hosts),
        settings.webhook_configuration,
    )

    def leading() -> bool:
        # From the moment the Lease is ours (the gate waits until kopf has loaded the resources), and no longer
        # once this replica stopped acting (it then asks the new leader, as a standby does).
        held = elector is None or elector.is_leader
        return held and not runtime.standby and not runtime.reconciler.stopped

    bundle = await certificates.ensure()
    tls = ServerTLS(bundle, settings.webhook_client_ca, runtime.metrics.webhook_refused.labels("tls").inc)
    webhook = Webhook(
        runtime.gate,
        runtime.store,
        runtime.metrics,
        leading=leading,
        leaders=LeaderLookup(functools.partial(_leader_url, elector)) if elector is not None else None,
        session=runtime.session,
        bundle=bundle,
        forward_name=settings.webhook_hosts[0],
        mtls=settings.webhook_client_ca is not None,
        unknown_token=runtime.reread_certificates,
    )
    runner = web.AppRunner(webhook.app(), access_log=None, shutdown_timeout=WEBHOOK_SHUTDOWN_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, settings.listen_address, settings.webhook_port, ssl_context=tls.front).start()
    if elector is None:  # the configuration is the leader's to write; without leader election, this replica's
        try:
            await certificates.configure(bundle)
        except Exception as exc:  # tried again every few seconds (Runtime.keep_certificates)
            log.warning("webhook configuration not written yet (%s: %s)", type(exc).__name__, exc)
    log.info(
        "deletion gate on https://%s:%d%s/<token>%s",
        settings.listen_address,
        settings.webhook_port,
        REVIEW_PATH,
        " (client certificates required)" if settings.webhook_client_ca else "",
    )
    runtime.gate.start()
    runtime.keep_certificates(certificates, tls, webhook.use, leading)
    return runner, webhook


class _Spared(Collection["asyncio.Task[Any]"]):
    """The tasks kopf leaves alone when it stops (it cancels every other task started since it began, after
    5 s): those that existed before it, and the webhook's reviews at that moment, which a stopping leader hands to
    the next one and which must get their answer (run.py's shutdown gives them WEBHOOK_SHUTDOWN_SECONDS)."""

    def __init__(self, existing: set[asyncio.Task[Any]], reviews: set[asyncio.Task[Any]]) -> None:
        self._existing = existing
        self._reviews = reviews

    def __contains__(self, task: object) -> bool:
        return task in self._existing or task in self._reviews

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self._existing | self._reviews)

    def __len__(self) -> int:
        return len(self._existing | self._reviews)


async def _kopf(settings: Settings, runtime: Runtime, stop: asyncio.Event, reviews: set[asyncio.Task[Any]]) -> None:
    """kopf.operator, but for the tasks it spares when it stops."""
    existing = set(asyncio.all_tasks())
    tasks = await kopf.spawn_tasks(
        registry=handlers.registry,
        memo=kopf.Memo(runtime=runtime),
        standalone=True,  # one active replica is the Lease's job, not kopf peering's
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        ready_flag=runtime.ready,
        stop_flag=stop,
    )
    await kopf.run_tasks(tasks, ignored=_Spared(existing, reviews))


async def serve(settings: Settings) -> int:
    """The process; its exit code: 1 when it stopped because the Lease was lost."""
    exit_code = 0
    shutdown = Shutdown()
    shutdown.install()
    runtime = await Runtime.create(settings)
    runtime.start_watching()
    site_runner = None
    if settings.metrics_port:
        site_runner = web.AppRunner(runtime.web_app(), access_log=None)
        await site_runner.setup()
        await web.TCPSite(site_runner, settings.listen_address, settings.metrics_port).start()
        log.info(
            "metrics and probes on %s:%d (/metrics /healthz /readyz)", settings.listen_address, settings.metrics_port
        )
    elector = None
    if settings.leader_elect:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(
            runtime.kube.api,
            LeaseSettings(settings.leader_election_namespace, settings.leader_election_name),
            identity,
            advertise=settings.webhook_advertise,
        )
    webhook_runner = None
    reviews: set[asyncio.Task[Any]] = set()
    if settings.webhook_port:
        try:
            webhook_runner, webhook = await _serve_webhook(settings, runtime, elector)
            reviews = webhook.tasks
        except Exception as exc:  # an opt-in feature must not stop every removal: run without it, loudly
            log.error("the deletion gate is off: its webhook could not start (%s: %s)", type(exc).__name__, exc)
            runtime.metrics.internal_errors.labels("webhook").inc()
    try:
        if elector is not None:
            runtime.standby = True
            if not await _until(shutdown.flag, elector.acquire()):
                return exit_code  # stopped while standing by: nothing to hand over
            runtime.standby = False
            runtime.certificates_now()  # the configuration is this replica's to keep now
        runtime.metrics.leader.set(1)
        operator = asyncio.create_task(_kopf(settings, runtime, shutdown.flag, reviews))
        reinstall = asyncio.create_task(_reinstall_when_ready(runtime.ready, shutdown))
        if elector is None:
            await operator
            reinstall.cancel()
            return exit_code
        keeper = asyncio.create_task(_keep_leading(elector, runtime))
        handover = asyncio.create_task(_hand_over_on_shutdown(shutdown, runtime, elector, keeper))
        done, _ = await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
        if keeper in done and not shutdown.flag.is_set():
            # Stopped acting already (_keep_leading), before another replica can take the Lease. What is left
            # is a shutdown like SIGTERM's, less the Lease's release: held reviews are handed over, not dropped.
            log.error(
                "lost leadership (%s): stopped acting; held reviews go to the next leader, then exiting",
                keeper.exception(),
            )
            exit_code = 1
            # No kubelet waits on this one: time to wait for the next leader, then to hand reviews over.
            shutdown.request("the Lease was lost", SHUTDOWN_DEADLINE_SECONDS + LOST_LEASE_SERVE_SECONDS)
        keeper.cancel()
        reinstall.cancel()
        await operator
        if not shutdown.flag.is_set():
            handover.cancel()
        await asyncio.gather(handover, return_exceptions=True)
        if exit_code and webhook_runner is not None:
            await _until_another_leads(elector, LOST_LEASE_SERVE_SECONDS)
    finally:
        if elector is not None and elector.is_leader:
            # Before the client closes, and bounded: a standby takes over at once, or after the Lease expires.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(elector.release(), timeout=3)
        if webhook_runner is not None:
            # First, while the session and the API client still work: reviews in flight here are being handed to
            # the new leader (or answered), and finish.
            await webhook_runner.cleanup()
        await runtime.close()
        if site_runner is not None:
            await site_runner.cleanup()
    return exit_code


def run(settings: Settings) -> int:
    kopf.configure(log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return asyncio.run(serve(settings))
