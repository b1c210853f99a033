"""A fake ALB client that models one server group, and the real Reconciler and GroupPipeline over it: for unit
tests of what the operator does as calls and jobs take their time (no emulator process)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any, cast

from alb_membership.alb.client import AlbClient
from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import AddAnswer, Job, ListedServer, RemoveAnswer, Server
from alb_membership.cluster.kube import Kube
from alb_membership.cluster.notices import Notices
from alb_membership.engine.jobs import JobTracker
from alb_membership.engine.pipeline import PipelineSettings, Services
from alb_membership.engine.reconciler import Reconciler, ReconcilerSettings
from alb_membership.metrics import Metrics
from tests.unit.fakes import ENI, RecordingKube, View

UID = "sgm-uid-1"
GATE = "target-health.albmembership.io/web"
A = Server("Ip", "10.0.0.1", 8080)
B = Server("Ip", "10.0.0.2", 8080)
FAST = PipelineSettings(coalesce_seconds=0.01, error_retry_seconds=0.2, transient_retry_seconds=0.05)


class Cloud:
    """One group: server -> (Status, Weight). Jobs end when the test says (``finish``) or at once (``instant``)."""

    def __init__(self) -> None:
        self.group: dict[Server, tuple[str, int]] = {}
        self.calls: list[tuple[str, list[Server], str]] = []
        self.refuse: AlbError | None = None  # the next add calls are refused with this
        self.refuse_if: Any = None  # a function of the servers: an AlbError or None
        self.instant = True
        self.jobs: dict[str, tuple[str, list[Server], dict[Server, int]]] = {}
        self._ids = itertools.count(1)
        self.token_servers: dict[str, list[Server]] = {}
        self.hold_call: asyncio.Event | None = None  # add calls wait for it (a slow answer)

    # -- the client's surface used by the pipeline ------------------------------------------------------------
    async def add_servers(
        self, group_id: str, servers: Sequence[Server], token: str, *, weights: Any = 100, dry_run: bool = False
    ) -> AddAnswer:
        self.calls.append(("add", list(servers), token))
        await asyncio.sleep(0.01)  # a round trip
        if dry_run:
            return AddAnswer("dry_run_passed", "req")
        if self.hold_call is not None:
            await self.hold_call.wait()
        if self.refuse is not None:
            raise self.refuse
        if self.refuse_if is not None and (exc := self.refuse_if(servers)) is not None:
            raise exc
        if token in self.token_servers and self.token_servers[token] != sorted(servers):
            raise AlbError("IdempotenceSignatureMismatch", "token reused with other servers")
        if any(s in self.group for s in servers):  # AlbClient turns ResourceAlreadyAssociated into this
            return AddAnswer("already_added", "req")
        job = f"job-{next(self._ids)}"
        self.token_servers[token] = sorted(servers)
        self.jobs[job] = ("add", list(servers), dict(weights))
        for s in servers:
            self.group[s] = ("Adding", weights[s])
        if self.instant:
            self.finish(job)
        return AddAnswer("accepted", "req", job)

    async def remove_servers(
        self, group_id: str, servers: Sequence[Server], token: str, *, dry_run: bool = False
    ) -> RemoveAnswer:
        self.calls.append(("remove", list(servers), token))
        if token in self.token_servers and self.token_servers[token] != sorted(servers):
            raise AlbError("IdempotenceSignatureMismatch", "token reused with other servers")
        if any(s not in self.group for s in servers):
            return RemoveAnswer("already_removed", "req")
        job = f"job-{next(self._ids)}"
        self.token_servers[token] = sorted(servers)
        self.jobs[job] = ("remove", list(servers), {})
        for s in servers:
            self.group[s] = ("Removing", self.group[s][1])
        if self.instant:
            self.finish(job)
        return RemoveAnswer("accepted", "req", job)

    def finish(self, job: str) -> None:
        kind, servers, _ = self.jobs[job]
        for s in servers:
            if kind == "add":
                self.group[s] = ("Available", self.group[s][1])
            else:
                self.group.pop(s, None)
        self.jobs[job] = ("done", servers, {})

    async def listed_servers(
        self, group_id: str, servers: Sequence[Server] = (), *, deadline: float | None = None
    ) -> dict[Server, ListedServer]:
        await asyncio.sleep(0.01)  # a round trip
        wanted = servers or list(self.group)
        return {s: ListedServer(s, *self.group[s]) for s in wanted if s in self.group}

    async def out_of_rotation(
        self, group_id: str, servers: Sequence[Server], *, deadline: float | None = None
    ) -> set[Server]:
        return {s for s in servers if s not in self.group}

    async def list_server_groups(self, ids: Sequence[str], *, deadline: float | None = None) -> list[dict[str, Any]]:
        return [{"ServerGroupId": ids[0], "ServerGroupStatus": "Available"}]

    def adds(self) -> list[list[Server]]:
        return [servers for kind, servers, _ in self.calls if kind == "add"]


class Tracker:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    async def wait(self, job_id: str, extra_seconds: float = 0.0) -> Job:
        while self.cloud.jobs[job_id][0] != "done":  # noqa: ASYNC110 (a fake: the test ends the job)
            await asyncio.sleep(0.01)
        return Job(job_id, "Succeeded")


def reconciler(cloud: Cloud, view: View, kube: RecordingKube, settings: PipelineSettings = FAST) -> Reconciler:
    services = Services(
        cast(AlbClient, cloud), cast(JobTracker, Tracker(cloud)), Metrics(), Notices(cast(Kube, kube)), settings
    )
    rec = Reconciler(
        ReconcilerSettings("cn-hangzhou", ENI, 0.2),
        lambda _r: services,
        cast(Kube, kube),
        Notices(cast(Kube, kube)),
        Metrics(),
    )
    rec.view = view
    return rec


async def settle(seconds: float = 0.5) -> None:
    await asyncio.sleep(seconds)


def written(kube: RecordingKube, uid: str) -> dict[str, Any]:
    """The resource's status as its merge patches so far made it (one level of maps deep, as status is)."""
    out: dict[str, Any] = {}
    for patched, patch in kube.patches:
        if patched != uid:
            continue
        for key, value in patch.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                merged = {**out[key], **value}
                out[key] = {k: v for k, v in merged.items() if v is not None}
            else:
                out[key] = value
    return out
