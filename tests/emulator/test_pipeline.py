"""GroupPipeline and JobTracker against the emulator, through the real ALB client: jobs that succeed, fail or are
never confirmed, servers already gone (Eni too), removals called off by a live owner, and a tracker that outlives
errors that are not the cloud's."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any, cast

import aiohttp
import pytest

from alb_membership.alb.client import AlbClient
from alb_membership.alb.credentials import Credentials, CredentialsError
from alb_membership.alb.endpoints import Endpoint
from alb_membership.alb.models import Job, Server
from alb_membership.alb.retry import RetryPolicy
from alb_membership.cluster.kube import Kube
from alb_membership.cluster.notices import Notices
from alb_membership.engine.jobs import JobTracker
from alb_membership.engine.pipeline import GroupPipeline, Holders, PipelineSettings, Services
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import Entry, GroupLedger, OwnerKey, Removal, now
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import ResourceState
from tests.support.alb import alb_client
from tests.support.emulator import EmulatorProcess, server
from tests.unit.fakes import RecordingKube

GROUP = "sgp-pipeline0000001"
KEY = ("cn-hangzhou", GROUP)
UID = "sgm-uid-1"
FAST = PipelineSettings(batch_size=40, coalesce_seconds=0.05, error_retry_seconds=0.5, transient_retry_seconds=0.2)


class Directory:
    def __init__(self, ledger: GroupLedger) -> None:
        self.ledger = ledger
        self.state = ResourceState(Ref("shop", "web", UID), Spec.parse({"serverGroupId": GROUP}), KEY)
        self.live: Holders = {}
        self.flushed = 0
        self.told: list[Server] = []  # servers whose place in the group changed, as the pipeline told
        self.others: dict[str, ResourceState] = {}  # more resources on the group, by UID
        self.changed_uids: list[str] = []

    def states_of(self, entries: Iterable[Entry], members: bool = False) -> list[ResourceState]:
        uids = {uid for e in entries for uid, _ in (e.owners if members else e.concerned())}
        return [self.state] + [state for uid, state in self.others.items() if uid in uids]

    def holders(self, ledger: GroupLedger) -> Holders:
        return self.live

    def dry_run(self, entry: Entry) -> bool:
        return False

    async def flush(self, states: Iterable[ResourceState]) -> None:
        self.flushed += 1

    def changed(self, states: Iterable[ResourceState]) -> None:
        self.changed_uids += [state.ref.uid for state in states]

    def in_group_changed(self, ledger: GroupLedger, servers: Iterable[Server]) -> None:
        self.told += servers


@pytest.fixture
def client(session: aiohttp.ClientSession, emulator: EmulatorProcess) -> AlbClient:
    return alb_client(
        session, emulator, retry=RetryPolicy(base_seconds=0.02, cap_seconds=0.2, total_seconds=5, max_attempts=10)
    )


def setup(
    client: AlbClient, tracker: JobTracker | None = None, settings: PipelineSettings = FAST
) -> tuple[GroupPipeline, Directory, RecordingKube]:
    ledger = GroupLedger(KEY)
    directory = Directory(ledger)
    kube = RecordingKube()
    services = Services(
        client, tracker or JobTracker(client, interval=0.05), Metrics(), Notices(cast(Kube, kube)), settings
    )
    return GroupPipeline(ledger, directory, services), directory, kube


def leaving(pipeline: GroupPipeline, *servers: Server) -> None:
    for i, s in enumerate(servers):
        key: OwnerKey = (UID, f"pod-{i}")
        pipeline.ledger.hold(key, s, "pod")
        assert pipeline.ledger.leave(key, "pod-terminating")
    pipeline.enqueue(servers)


async def until(check: Any, what: str, seconds: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def in_group(emulator: EmulatorProcess) -> set[str]:
    return {f"{s['ServerId']}:{s.get('ServerIp', '')}" for s in emulator.group(GROUP)["Servers"]}


def accepted(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("RemoveServersFromServerGroup") if r["code"] == "OK"]


async def test_a_batch_goes_out_in_one_call_and_is_dropped_once_done(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server(f"10.0.0.{i}") for i in range(1, 5)])
    pipeline, directory, _ = setup(client)
    leaving(pipeline, *(Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)))
    await until(lambda: not pipeline.ledger.entries, "the ledger to empty")
    assert in_group(emulator) == {"10.0.0.4:10.0.0.4"}
    assert len(accepted(emulator)) == 1 and directory.flushed >= 1
    assert directory.state.removed_count == 3 and directory.state.jobs[0].status == "Succeeded"
    await pipeline.close()


async def test_a_resource_whose_owner_joined_a_removal_in_flight_hears_of_its_end(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """Another resource's owner of the server, first seen leaving while the job runs (a Service's endpoint of the pod
    whose pod owner decided the removal), joins the removal. Before: only the resources of the call heard of the
    job's end, so the other's status showed the removal pending until some later change of it."""
    emulator.add_group(GROUP, [server("10.0.0.1")])
    emulator.admin("PUT", "behaviour", {"job_seconds": 0.5})
    pipeline, directory, _ = setup(client)
    other = ResourceState(Ref("shop", "web-svc", "sgm-uid-2"), Spec.parse({"serverGroupId": GROUP}), KEY)
    directory.others[other.ref.uid] = other
    s = Server("Ip", "10.0.0.1", 8080)
    leaving(pipeline, s)
    await until(lambda: accepted(emulator), "the call")
    key: OwnerKey = (other.ref.uid, "endpoint/web/uid-1")
    assert not pipeline.ledger.leave(key, "endpoint-terminating", server=s, source="endpoint"), "joined, not new"
    assert pipeline.ledger.entries[s].leaving_owners() == [(UID, "pod-0"), key]
    await until(lambda: not pipeline.ledger.entries, "the removal to end")
    assert other.removed_count == 1
    assert other.ref.uid in directory.changed_uids, "its status is written"
    await pipeline.close()


async def test_a_failed_job_is_retried_as_a_new_attempt_with_a_new_token(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    emulator.admin("PUT", "behaviour", {"job_failure_rate": 1.0, "job_seconds": 0.1})
    pipeline, directory, _ = setup(client)
    leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
    await until(lambda: len(accepted(emulator)) >= 2, "a second call after the failed job")
    emulator.admin("PUT", "behaviour", {"job_failure_rate": 0.0})
    await until(lambda: not pipeline.ledger.entries, "the removal to succeed")
    tokens = [r["client_token"] for r in accepted(emulator)]
    assert len(set(tokens)) == len(tokens), "each attempt has its own token"
    assert any(j.status == "Failed" for j in directory.state.jobs)
    await pipeline.close()


async def test_a_job_never_confirmed_is_unknown_never_succeeded(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    emulator.admin("PUT", "behaviour", {"job_seconds": 30})
    tracker = JobTracker(client, interval=0.05, unknown_after=0.3)
    pipeline, directory, kube = setup(client, tracker)
    leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
    await until(lambda: any(j.status == "Unknown" for j in directory.state.jobs), "the Unknown verdict")
    await until(lambda: "RemovalFailed" in [reason for _, reason, _ in kube.events], "the Event (posted apart)")
    assert pipeline.ledger.entries, "an unconfirmed removal is not forgotten"
    await pipeline.close()


async def test_servers_already_gone_in_a_multi_server_call(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.2")])
    pipeline, _, kube = setup(client)
    leaving(pipeline, *(Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)))
    await until(lambda: not pipeline.ledger.entries, "the ledger to empty")
    assert in_group(emulator) == set()
    assert [r["servers"] for r in accepted(emulator)] == [["10.0.0.2"]]
    assert "AlreadyRemoved" in [reason for _, reason, _ in kube.events]
    await pipeline.close()


async def test_eni_servers_are_matched_by_their_full_identity(client: AlbClient, emulator: EmulatorProcess) -> None:
    """Two IPs on one ENI are two servers; one already gone must not make the other loop forever."""
    emulator.add_group(GROUP, [server("eni-1", 80, "Eni", server_ip="10.0.0.2")], type_="Instance")
    pipeline, _, _ = setup(client)
    leaving(pipeline, Server("Eni", "eni-1", 80, "10.0.0.1"), Server("Eni", "eni-1", 80, "10.0.0.2"))
    await until(lambda: not pipeline.ledger.entries, "the ledger to empty")
    calls = emulator.requests("RemoveServersFromServerGroup")
    assert len(calls) == 2, calls
    assert in_group(emulator) == set()
    await pipeline.close()


async def test_a_live_owner_calls_the_removal_off_before_the_call(client: AlbClient, emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1"), server("10.0.0.2")])
    pipeline, directory, kube = setup(client)
    held = Server("Ip", "10.0.0.1", 8080)
    directory.live = {held: {("sgm-uid-2", "uid-new"): ("pod", "new")}}
    leaving(pipeline, held, Server("Ip", "10.0.0.2", 8080))
    await until(lambda: not pipeline.ledger.pending(), "the batch to settle")
    assert [r["servers"] for r in accepted(emulator)] == [["10.0.0.2"]]
    assert pipeline.ledger.server_of(("sgm-uid-2", "uid-new")) == held
    assert "RemovalCalledOff" in [reason for _, reason, _ in kube.events]
    await pipeline.close()


class FlakyCredentialsClient:
    """The real client, whose first job look-ups fail the way a credentials refresh does."""

    def __init__(self, client: AlbClient, failures: int) -> None:
        self._client = client
        self.failures = failures

    async def list_asyn_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("credentials refresh failed: the STS endpoint did not answer")
        return await self._client.list_asyn_jobs(job_ids)


async def test_the_tracker_outlives_errors_that_are_not_the_clouds(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    flaky = FlakyCredentialsClient(client, failures=3)
    errors: list[int] = []
    tracker = JobTracker(cast(AlbClient, flaky), interval=0.05, max_backoff=0.2, on_error=lambda: errors.append(1))
    pipeline, directory, _ = setup(client, tracker)
    leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
    await until(lambda: not pipeline.ledger.entries, "the job to be confirmed after the errors")
    assert len(errors) == 3 and flaky.failures == 0
    assert directory.state.jobs[0].status == "Succeeded"
    await tracker.close()
    await pipeline.close()


async def test_a_server_called_off_from_a_batch_written_ahead_leaves_the_rest_a_new_token(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """A successor's restored batch: one server is a live pod's now. The rest go under a new token (the old one,
    with fewer servers, would be refused as IdempotenceSignatureMismatch)."""
    emulator.add_group(GROUP, [server("10.0.0.1"), server("10.0.0.2")])
    pipeline, directory, _ = setup(client)
    held, other = Server("Ip", "10.0.0.1", 8080), Server("Ip", "10.0.0.2", 8080)
    for i, s in enumerate((held, other)):
        pipeline.ledger.restore((UID, f"pod-{i}"), s, "pod", None, Removal("pod-gone", now(), client_token="albm-old"))
    directory.live = {held: {("sgm-uid-2", "uid-new"): ("pod", "new")}}
    pipeline.enqueue([held, other])
    await until(lambda: not pipeline.ledger.pending(), "the batch to settle")
    assert [(r["servers"], r["code"]) for r in emulator.requests("RemoveServersFromServerGroup")] == [
        (["10.0.0.2"], "OK")
    ]
    assert accepted(emulator)[0]["client_token"] != "albm-old"
    await pipeline.close()


class NoCredentials:
    async def get(self) -> Credentials:
        raise CredentialsError("no usable Alibaba Cloud credentials: the STS endpoint did not answer")


async def test_missing_credentials_make_the_resource_degraded(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    async with aiohttp.ClientSession() as session:
        broken = AlbClient(session, Endpoint.from_url(emulator.url), NoCredentials())
        pipeline, directory, kube = setup(broken)
        leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
        await until(lambda: "Degraded" in directory.state.conditions, "the Degraded condition")
        degraded = directory.state.conditions["Degraded"]
        assert (degraded.status, degraded.reason) == ("True", "CredentialsUnavailable")
        assert "credentials" in degraded.message and "RemovalRefused" in [r for _, r, _ in kube.events]
        await pipeline.close()


async def test_the_unknown_verdict_waits_out_the_groups_drain(client: AlbClient, emulator: EmulatorProcess) -> None:
    """A job that ends only after a long connection drain is not declared Unknown before the drain could end."""
    emulator.add_group(GROUP, [server("10.0.0.1")])
    emulator.admin("PUT", "behaviour", {"job_seconds": 1.0})
    tracker = JobTracker(client, interval=0.05, unknown_after=0.3)
    removal = await client.remove_servers(GROUP, [Server("Ip", "10.0.0.1", 8080)], "albm-drain-test")
    assert removal.job_id is not None
    job = await tracker.wait(removal.job_id, extra_seconds=2.0)
    assert job.status == "Succeeded"
    await tracker.close()


async def test_a_refused_batch_is_retried_before_removals_decided_after_it(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """A refused call waits at the head of the group's queue: removals decided meanwhile go with it or after it,
    never before it (with a group refusing changes for a whole drain, newer batches overtook old ones)."""
    emulator.add_group(GROUP, [server("10.0.0.1"), server("10.0.0.2")])
    emulator.admin("PUT", "faults", {"actions": ["RemoveServersFromServerGroup"], "script": [
        {"kind": "error", "code": "Forbidden.NoPermission"}]})  # fmt: skip
    pipeline, _, _ = setup(client)
    leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
    await until(lambda: emulator.requests("RemoveServersFromServerGroup"), "the refused call")
    pipeline.ledger.hold((UID, "pod-late"), Server("Ip", "10.0.0.2", 8080), "pod")
    pipeline.ledger.leave((UID, "pod-late"), "pod-terminating")
    pipeline.enqueue([Server("Ip", "10.0.0.2", 8080)])
    await until(lambda: not pipeline.ledger.entries, "both removals", seconds=15)
    sent = [r["servers"] for r in emulator.requests("RemoveServersFromServerGroup") if r["code"] == "OK"]
    assert "10.0.0.1" in sent[0], f"the refused removal was overtaken: {sent}"
    await pipeline.close()


async def test_a_static_server_dropped_put_back_and_dropped_again_leaves_twice(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """The second removal of one owner must not reuse the first one's token: the cloud would answer it with the
    first (finished) job and the server would stay while status said Succeeded."""
    emulator.add_group(GROUP, [server("10.0.0.1")])
    pipeline, _, _ = setup(client)
    static: OwnerKey = (UID, "static/Ip:10.0.0.1:8080")
    target = Server("Ip", "10.0.0.1", 8080)
    for round_ in (1, 2):
        pipeline.ledger.hold(static, target, "static")
        assert pipeline.ledger.leave(static, "spec-change")
        pipeline.enqueue([target])
        await until(lambda: not pipeline.ledger.entries, f"removal {round_} to finish")
        assert in_group(emulator) == set(), f"removal {round_} took the server out"
        if round_ == 1:
            emulator.add_group(GROUP, [server("10.0.0.1")])  # put back in the group, as a person would
    tokens = [r["client_token"] for r in accepted(emulator)]
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    await pipeline.close()


def refused_on_the_way(emulator: EmulatorProcess, times: int, status: int = 414) -> None:
    """The next ``times`` removal calls are refused before the API, as a gateway's request-line limit, a proxy or a
    WAF refuses: a 4xx that is not the API's JSON."""
    body = "<html><body>Request-URI Too Large</body></html>"
    script = [{"kind": "http", "status": status, "body": body}] * times
    emulator.admin("PUT", "faults", {"script": script, "actions": ["RemoveServersFromServerGroup"]})


async def test_a_call_refused_on_the_way_is_split_never_sent_again_as_it_was(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server(f"10.0.0.{i}") for i in range(1, 11)])
    refused_on_the_way(emulator, times=1)
    pipeline, directory, kube = setup(client)
    leaving(pipeline, *(Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 11)))
    await until(lambda: not pipeline.ledger.entries, "the ledger to empty")
    assert in_group(emulator) == set()
    calls = emulator.requests("RemoveServersFromServerGroup")
    assert [len(c["servers"]) for c in calls] == [10, 5, 5]
    assert len({c["client_token"] for c in calls}) == 3, "another set of servers, another token"
    assert "RemovalSplit" in [reason for _, reason, _ in kube.events]
    assert "Degraded" not in directory.state.conditions or directory.state.conditions["Degraded"].status == "False"
    await pipeline.close()


async def test_a_server_refused_alone_is_degraded_tried_less_often_and_leaves_once_the_way_clears(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """A WAF refusing every removal: the batch is split down to single servers, each refusal of a server alone is
    counted on its own (splits are not refusals), Degraded names the answer and stays while any removal of the
    resource is refused, and once the way clears the servers leave and the resource is Ready again."""
    emulator.add_group(GROUP, [server(f"10.0.0.{i}") for i in range(1, 6)])
    refused_on_the_way(emulator, times=1000, status=403)
    settings = dataclasses.replace(FAST, refused_retry_seconds=0.6)
    pipeline, directory, _ = setup(client, settings=settings)
    leaving(pipeline, *(Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 5)))
    first = Server("Ip", "10.0.0.1", 8080)

    def refusals() -> int:
        entry = pipeline.ledger.entries.get(first)
        return entry.removal.refused if entry is not None and entry.removal is not None else 0

    await until(lambda: refusals() >= FAST.max_job_attempts + 1, "tries past the quick ones", seconds=20)
    calls = emulator.requests("RemoveServersFromServerGroup")
    assert [len(c["servers"]) for c in calls[:3]] == [4, 2, 1], "split down to one server"
    assert len({c["client_token"] for c in calls}) == len(calls), "never sent again as it was"
    degraded = directory.state.conditions["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "TransportRefused") and "HTTP 403" in degraded.message

    emulator.admin("DELETE", "faults")
    await until(lambda: not pipeline.ledger.entries, "the servers to leave once the way clears", seconds=20)
    assert in_group(emulator) == {"10.0.0.5:10.0.0.5"}
    assert directory.state.conditions["Ready"].status == "True"
    await pipeline.close()


async def test_already_gone_without_a_listing_splits_the_call_instead_of_looping(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """A RAM policy without ListServerGroupServers: a multi-server call that comes back "already gone" cannot be
    told apart by a listing, so it is split until each server's own answer tells."""
    emulator.add_group(GROUP, [server("10.0.0.2")])
    emulator.admin("PUT", "faults", {"rates": {"Forbidden.NoPermission": 1.0}, "actions": ["ListServerGroupServers"]})
    pipeline, directory, kube = setup(client)
    leaving(pipeline, *(Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)))
    await until(lambda: not pipeline.ledger.entries, "the ledger to empty")
    assert in_group(emulator) == set()
    assert [r["servers"] for r in accepted(emulator)] == [["10.0.0.2"]]
    assert "ServerGroupUnlisted" in [reason for _, reason, _ in kube.events]
    assert directory.state.conditions["Ready"].status == "True"
    assert len(emulator.requests("RemoveServersFromServerGroup")) <= 6, "a few splits, not a loop"
    await pipeline.close()


async def test_a_scale_down_of_150_at_batch_200_behind_a_short_request_line_limit_all_leave(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """The issue's case: aiohttp's default 8,190-byte request line refuses a removal of more than about 95 servers
    (the SDK puts them in the query string). Before, none of the 150 left: the call went back unchanged forever."""
    emulator.add_group(GROUP, [server(f"10.0.{i // 250}.{i % 250}") for i in range(150)])
    emulator.admin("PUT", "behaviour", {"max_request_line": 8190, "max_servers_per_call": 200})
    pipeline, _, kube = setup(client, settings=dataclasses.replace(FAST, batch_size=200))
    leaving(pipeline, *(Server("Ip", f"10.0.{i // 250}.{i % 250}", 8080) for i in range(150)))
    await until(lambda: not pipeline.ledger.entries, "all 150 to leave", seconds=30)
    assert in_group(emulator) == set()
    sizes = [len(r["servers"]) for r in accepted(emulator)]
    assert sum(sizes) == 150 and max(sizes) <= 75, sizes
    assert "RemovalSplit" in [reason for _, reason, _ in kube.events]
    await pipeline.close()


async def test_a_draining_server_batched_with_a_live_one_does_not_loop(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """ALB's own statuses: a removed server shows Removing while its connections drain, and removing it again is
    "not found". Batched with another server, the listing shows both still there, so it cannot tell which one is
    out: the call is split until each answer tells, never sent again as it was."""
    emulator.admin("PUT", "behaviour", {"drain_status": "Removing", "job_seconds": 0.1})
    emulator.add_group(
        GROUP, [server("10.0.0.1"), server("10.0.0.2")], connection_drain={"enabled": True, "timeout_seconds": 60}
    )
    pipeline, directory, _ = setup(client)
    leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
    await until(lambda: not pipeline.ledger.entries, "the first removal")
    assert emulator.group(GROUP)["Servers"][0]["Status"] == "Removing", "draining, shown as ALB shows it"
    # The IP comes back to a new pod, which is deleted at once together with another one.
    pipeline.ledger.hold((UID, "pod-new"), Server("Ip", "10.0.0.1", 8080), "pod")
    assert pipeline.ledger.leave((UID, "pod-new"), "pod-terminating")
    pipeline.ledger.hold((UID, "pod-b"), Server("Ip", "10.0.0.2", 8080), "pod")
    assert pipeline.ledger.leave((UID, "pod-b"), "pod-terminating")
    pipeline.enqueue([Server("Ip", "10.0.0.1", 8080), Server("Ip", "10.0.0.2", 8080)])
    await until(lambda: not pipeline.ledger.entries, "both to be out")
    calls = emulator.requests("RemoveServersFromServerGroup")
    assert len(calls) <= 5, f"{len(calls)} calls: a loop"
    assert directory.state.conditions["Ready"].status == "True"
    await pipeline.close()


# -- additions ----------------------------------------------------------------------------------------------------


def joining(pipeline: GroupPipeline, weight: int, *servers: Server) -> None:
    for i, s in enumerate(servers):
        pipeline.ledger.hold((UID, f"new-{i}"), s, "pod")
        assert pipeline.ledger.want(s, weight, "registration")
    pipeline.enqueue(servers)


def additions(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("AddServersToServerGroup") if r["code"] == "OK"]


async def test_additions_go_in_one_call_and_end_available_with_their_weight(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server("10.0.0.9")])
    pipeline, directory, kube = setup(client)
    new = [Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)]
    joining(pipeline, 25, *new)
    await until(lambda: all(pipeline.ledger.entries[s].addition is None for s in new), "the additions to end")
    assert {pipeline.ledger.entries[s].in_group for s in new} == {"Available"}, "as the read after the job shows"
    listed = {x["ServerId"]: x for x in emulator.group(GROUP)["Servers"]}
    assert {listed[s.server_id]["Weight"] for s in new} == {25}
    assert len(additions(emulator)) == 1 and directory.state.jobs[0].trigger == "add: registration"
    assert sorted(directory.told) == new, "their pods' readiness gates are told"
    assert "RegistrationSucceeded" in [reason for _, reason, _ in kube.events]
    await pipeline.close()


async def test_an_addition_some_of_which_are_in_already_is_split_by_a_listing(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    pipeline, _, _ = setup(client)
    new = [Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)]
    joining(pipeline, 100, *new)
    await until(lambda: all(pipeline.ledger.entries[s].addition is None for s in new), "the additions to end")
    accepted = additions(emulator)
    assert [sorted(r["servers"]) for r in accepted] == [["10.0.0.2", "10.0.0.3"]], "the one in already is not sent"
    await pipeline.close()


async def test_removals_go_before_additions_and_an_addition_is_not_starved(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server(f"10.0.0.{i}") for i in range(1, 4)])
    pipeline, _, _ = setup(client, settings=dataclasses.replace(FAST, batch_size=1))
    joining(pipeline, 100, Server("Ip", "10.0.0.7", 8080))
    leaving(pipeline, *(Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)))
    await until(lambda: not any(e.change for e in pipeline.ledger.entries.values()), "every change to end")
    calls = [
        r["action"]
        for r in emulator.requests()
        if r["action"] in ("AddServersToServerGroup", "RemoveServersFromServerGroup") and r["code"] == "OK"
    ]
    assert calls[:2] == ["RemoveServersFromServerGroup", "AddServersToServerGroup"], calls
    await pipeline.close()


async def test_a_full_group_is_degraded_and_the_addition_waits_for_room(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    emulator.add_group(GROUP, [server(f"10.0.{i // 250}.{i % 250}") for i in range(1000)])
    pipeline, directory, _ = setup(client)
    joining(pipeline, 100, Server("Ip", "10.9.9.9", 8080))
    degraded = directory.state.conditions.get
    await until(lambda: (c := degraded("Degraded")) is not None and c.status == "True", "Degraded")
    assert directory.state.conditions["Degraded"].reason == "QuotaExceededServersNum"
    await asyncio.sleep(1.0)
    refused = [r for r in emulator.requests("AddServersToServerGroup") if r["code"] == "QuotaExceeded.ServersNum"]
    assert len(refused) == 1, "not a retry loop"
    leaving(pipeline, Server("Ip", "10.0.0.0", 8080))
    await until(lambda: additions(emulator), "the addition once a removal made room")
    await pipeline.close()


async def test_servers_the_group_holds_already_are_not_added_again(
    client: AlbClient, emulator: EmulatorProcess
) -> None:
    """Registration turned on for a workload another controller had put in: one read, no refused writes."""
    emulator.add_group(GROUP, [server(f"10.0.0.{i}", weight=60) for i in range(1, 4)])
    pipeline, _, _ = setup(client)
    held = [Server("Ip", f"10.0.0.{i}", 8080) for i in range(1, 4)]
    for i, s in enumerate(held):
        pipeline.ledger.hold((UID, f"new-{i}"), s, "pod")
        pipeline.ledger.entries[s].read_first = True  # as a resource's start records its members
    joining(pipeline, 100, *held)
    await until(lambda: all(pipeline.ledger.entries[s].addition is None for s in held), "the additions to end")
    assert emulator.requests("AddServersToServerGroup") == [], "nothing written"
    assert {(pipeline.ledger.entries[s].in_group, pipeline.ledger.entries[s].weight) for s in held} == {
        ("Available", 60)
    }
    await pipeline.close()
