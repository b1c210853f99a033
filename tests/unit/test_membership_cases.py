"""Membership both ways, case by case (found by a review): the real Reconciler and GroupPipeline over a fake ALB
client that models one group (no emulator process)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from alb_membership.alb.errors import AlbError
from alb_membership.alb.models import Server
from alb_membership.engine.readiness import ReadinessGates, verdict
from alb_membership.engine.reconciler import Reconciler
from alb_membership.metrics import Metrics
from alb_membership.model.membership import PodView
from alb_membership.model.status import to_status
from tests.unit.fake_cloud import GATE, UID, A, B, Cloud, reconciler, settle
from tests.unit.fakes import RecordingKube, View, pod, resource


def registering(**extra: Any) -> dict[str, Any]:
    return resource(
        podSelector={"matchLabels": {"app": "web"}},
        backend={"serverType": "Ip", "port": 8080},
        registration={"enabled": True, "weight": 100},
        **extra,
    )


def one_gated_member(rec: Reconciler, view: View) -> PodView:
    """A live, Ready pod "a", the one member of a remove-only resource with the deletion gate."""
    live = pod("a", ready=True)
    view.pod_list = [live]
    rec.start(
        resource(
            podSelector={"matchLabels": {"app": "web"}},
            backend={"serverType": "Ip", "port": 8080},
            deletionGate={"enabled": True},
        ),
        repair=False,
    )
    return live


async def test_a_sent_addition_whose_pod_left_before_it_was_sent_again_is_never_finished_and_its_server_leaks() -> None:
    """Restart mid add burst: status has the addition with its token; while no operator ran, the pod was deleted
    (the call had gone through: the server is in the group). The new operator restores the addition, sees the pod
    gone (a removal beside the sent addition), and the next batch drops the addition (no live owner, _still_wanted)
    without finishing it: the removal behind it never goes and the server stays in the group forever."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)  # the earlier operator's call went through
    first = reconciler(cloud, view, kube)
    first.view = view
    view.pod_list = [pod("a", ready=True)]
    first.load(registering())
    ledger = first.ledger(first.resources[UID].group)
    ledger.hold((UID, "uid-a"), A, "pod", "a")
    ledger.seen_in_group(A, "Absent", None)
    assert ledger.want(A, 100, "registration")
    ledger.entries[A].addition.client_token = "albm-tok"  # type: ignore[union-attr]
    written = to_status(first.resources[UID], ledger)

    view.pod_list = []  # the pod was deleted while no operator ran
    second = reconciler(cloud, view, kube)
    body = {**registering(), "status": written}
    second.start(body, repair=True)
    await settle(1.0)
    assert A not in cloud.group, "the pod is gone: its server must leave the group"
    assert A not in second.ledger(second.resources[UID].group).entries, "the entry must leave the ledger"
    for p in second.pipelines.values():
        await p.close()


async def test_a_full_group_shows_registration_failed_on_the_readiness_gate() -> None:
    """QuotaExceeded.ServersNum (or Forbidden, Mismatch.ServerType): record_refused sets error but neither failures
    nor refused, so verdict() says ServerAdding, not RegistrationFailed as docs/resource.md and the runbook say."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.refuse = AlbError("QuotaExceeded.ServersNum", "full", http_status=400)
    rec = reconciler(cloud, view, kube)
    gated_pod = pod("a", containers_ready=True, gates={GATE: "False"})
    view.pod_list = [gated_pod]
    rec.start(registering(), repair=False)
    await settle()
    ledger = rec.ledger(rec.resources[UID].group)
    assert cloud.adds(), "the addition was tried"
    got = verdict([ledger.entries[A]], ledger.group_id)
    assert got.reason == "RegistrationFailed", got
    for p in rec.pipelines.values():
        await p.close()


async def test_one_static_server_of_the_wrong_type_blocks_every_addition_of_the_group() -> None:
    """Mismatch.ServerType refuses the whole call; the batch is sent again as it was every error_retry_seconds,
    so the pods batched with the bad static server are never added (issue 16, 5: never a retry loop)."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    ecs = Server("Ecs", "i-bp1bad", 80)

    def mismatch(servers: Sequence[Server]) -> AlbError | None:
        return AlbError("Mismatch.ServerType", "Ip group", http_status=400) if ecs in servers else None

    cloud.refuse_if = mismatch
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("a", ready=True), pod("b", ip="10.0.0.2", ready=True)]
    rec.start(registering(servers=[{"serverId": "i-bp1bad", "serverType": "Ecs", "port": 80}]), repair=False)
    await settle(1.0)
    assert A in cloud.group and B in cloud.group, f"the good servers wait behind the bad one: {cloud.adds()}"
    for p in rec.pipelines.values():
        await p.close()


async def test_a_server_the_group_shows_removing_is_added_again_and_again() -> None:
    """A new pod reusing the IP of a server still Removing/draining (IP reuse within the drain timeout): the cloud
    answers ResourceAlreadyAssociated, _added records in_group=Removing, in_group_changed decides the addition
    again (Removing is not in IN_GROUP): a hot loop of add + list calls, bounded only by the rate limiter."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Removing", 100)  # someone's (or our earlier) removal, draining
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("new", ready=True)]
    rec.start(registering(), repair=False)
    await settle(1.0)
    assert len(cloud.adds()) <= 2, f"{len(cloud.adds())} add calls in 1 s for one server"
    for p in rec.pipelines.values():
        await p.close()


async def test_a_whole_group_read_that_misses_a_server_flips_a_ready_pods_gate() -> None:
    """antientropy._read_members: a paged listing of a changing group may miss a server (its own docstring); the
    miss is recorded as Absent at once, and the pod's gate is written False (the pod turns NotReady) before the
    targeted read puts it back."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)
    rec = reconciler(cloud, view, kube)
    writes: list[tuple[str, str]] = []

    async def set_condition(ns: str, name: str, uid: str, condition: dict[str, Any]) -> bool:
        writes.append((condition["status"], condition["reason"]))
        return True

    async def read(key: Any, servers: list[Server]) -> dict[Server, tuple[str, int | None]]:
        listed = await cloud.listed_servers(key[1], servers)
        return {s: (listed[s].status, listed[s].weight) if s in listed else ("Absent", None) for s in servers}

    rec.readiness = ReadinessGates(set_condition, read, rec.group_read, Metrics(), poll_seconds=0.05)
    ready = pod("a", ready=True, gates={GATE: "True"})
    view.pod_list = [ready]
    rec.start(registering(), repair=False)
    ledger = rec.ledger(rec.resources[UID].group)
    rec.group_read(ledger.key, {A: ("Available", 100)}, every=False)
    await settle(0.2)
    writes.clear()
    rec.group_read(ledger.key, {A: ("Absent", None)}, every=False)  # a page missed it
    await settle(0.3)
    assert ("False", "ServerAdding") not in writes and ("False", "ServerNotRegistered") not in writes, writes
    await rec.readiness.close()
    for p in rec.pipelines.values():
        await p.close()


async def test_an_undo_in_remove_only_mode_puts_the_server_back_with_the_weight_it_had() -> None:
    """Remove-only with the deletion gate (the integration test's mode): nothing ever reads the server's weight
    into the ledger (seen_in_group is fed only by readiness polls and registration's anti-entropy read), so the
    undo puts a weight-30 server back at 100. tests/integration/test_registration.py cannot see this: the
    emulator's servers there all have weight 100."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 30)
    rec = reconciler(cloud, view, kube)
    live = one_gated_member(rec, view)
    rec.gate(live)
    await settle(0.3)
    assert A not in cloud.group, "the gate's removal went"
    rec.ungate(live)  # the deletion was refused by another webhook
    await settle(0.3)
    assert cloud.group.get(A) == ("Available", 30), cloud.group
    for p in rec.pipelines.values():
        await p.close()


async def test_a_new_leader_puts_back_a_gated_removal_whose_deletion_never_came() -> None:
    """The leader that answered the review dies before its undo_after_seconds look: the successor restores the
    deletion-gate removal, marks the pod gated (reconciler.load) and finishes the removal, but nothing ever looks
    at the pod again (no expect_deletion timer; GatedPods just expires; anti-entropy's repair counts only
    absence): the live pod stays out of the group until some unrelated event of it."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)
    spec = resource(
        podSelector={"matchLabels": {"app": "web"}},
        backend={"serverType": "Ip", "port": 8080},
        deletionGate={"enabled": True},
    )
    live = pod("a", ready=True)
    view.pod_list = [live]
    first = reconciler(cloud, view, kube)
    first.start(spec, repair=False)
    first.gate(live)  # the old leader decided the removal, then died
    written = to_status(first.resources[UID], first.ledger(first.resources[UID].group))
    assert written["pending"][A.compact]["trigger"] == "deletion-gate"

    second = reconciler(cloud, view, kube)
    second.gated._seconds = 0.3  # GATED_SECONDS (60 s), shortened
    second.settings = dataclasses.replace(second.settings, undo_after_seconds=0.1)
    second.start({**spec, "status": written}, repair=True)
    await settle(1.5)
    assert A in cloud.group, "the pod was never deleted: its server goes back"
    for p in second.pipelines.values():
        await p.close()


async def test_turning_dry_run_off_adds_the_members_the_precheck_passed_for() -> None:
    """record_dry_run leaves in_group=DryRunPassed and want() refuses while it stays so: after dryRun: false the
    spec change's sync decides nothing; the members wait for the next anti-entropy read (300 s by default)."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("a", ready=True)]
    rec.start(registering(dryRun=True), repair=False)
    await settle(0.3)
    assert cloud.adds() == [[A]] and A not in cloud.group, "a precheck only"
    changed = registering(dryRun=False)
    changed["metadata"]["generation"] = 2
    rec.start(changed, repair=False)
    await settle(0.3)
    assert A in cloud.group, "dryRun off: the member is added"
    for p in rec.pipelines.values():
        await p.close()


async def test_a_pod_that_leaves_while_its_addition_fails_retryably_is_removed() -> None:
    """The pod starts terminating while its addition's call is out; the call fails retryably (the client's retries
    ran out: throttling, 5xx, a timeout), so the addition keeps its token (it may have reached the cloud). The
    removal beside it never goes: Entry.change is still the sent addition, and _still_wanted drops it (no live
    owner) without finishing it. The same stuck entry as after the restart above, without a restart."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.hold_call = asyncio.Event()
    cloud.refuse = AlbError("ServiceUnavailable", "the call may have gone through", http_status=503)
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("a", ready=True)]
    rec.start(registering(), repair=False)
    await settle(0.1)
    assert cloud.adds() == [[A]], "the addition's call is out"
    leaving = pod("a", ready=True, deleting=True)
    view.put(leaving)
    rec.pod_changed(leaving, deleted=False)
    cloud.group[A] = ("Available", 100)  # the call reached the cloud; its answer is lost
    cloud.hold_call.set()
    await settle(0.3)
    cloud.refuse = None
    await settle(0.5)
    ledger = rec.ledger(rec.resources[UID].group)
    assert A not in cloud.group, f"the terminating pod's server is still in the group: {cloud.calls}"
    assert A not in ledger.entries
    for p in rec.pipelines.values():
        await p.close()


async def test_a_readiness_condition_whose_writes_fail_for_a_moment_is_written_later() -> None:
    """ReadinessGates gives up after WRITE_TRIES immediate tries (no backoff); 'the next read of its group tries
    again' holds only while the verdict is not True (only then is the pod's server polled): a True that could not
    be written during a short API-server outage leaves the pod NotReady until some unrelated event of it."""
    fails = {"left": 3}
    writes: list[str] = []

    async def set_condition(ns: str, name: str, uid: str, condition: dict[str, Any]) -> bool:
        if condition["status"] == "True" and fails["left"]:
            fails["left"] -= 1
            raise RuntimeError("503 from the API server")
        writes.append(condition["status"])
        return True

    async def read(key: Any, servers: list[Server]) -> dict[Server, tuple[str, int | None]]:
        return {s: ("Available", 100) for s in servers}

    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)
    rec = reconciler(cloud, view, kube)
    rec.readiness = ReadinessGates(set_condition, read, rec.group_read, Metrics(), poll_seconds=0.05)
    waiting = pod("a", containers_ready=True, gates={GATE: "False"})
    view.pod_list = [waiting]
    rec.start(registering(), repair=False)
    await settle(2.5)  # three failures, retried 0.25, 0.5 and 1 s apart
    assert writes and writes[-1] == "True", f"the gate never turned True: {writes}"
    await rec.readiness.close()
    for p in rec.pipelines.values():
        await p.close()


class Looks:
    """A reconciler whose undo looks wait 0.1 s and ask an API server that answers "live" when the test says."""

    def __init__(self) -> None:
        self.cloud, self.view, kube = Cloud(), View(), RecordingKube()
        self.cloud.group[A] = ("Available", 100)
        self.rec = reconciler(self.cloud, self.view, kube)
        self.rec.settings = dataclasses.replace(self.rec.settings, undo_after_seconds=0.1)
        self.asked, self.answer = asyncio.Event(), asyncio.Event()
        self.rec.confirm_live = self.confirm_live
        self.live = one_gated_member(self.rec, self.view)

    async def confirm_live(self, _ns: str, _name: str, _uid: str) -> bool:
        self.asked.set()
        await self.answer.wait()
        return True  # the API server's answer when it was asked: live

    def let_through(self) -> None:
        """A hold of the pod's deletion and its answer (the gate calls these two)."""
        self.rec.gate(self.live)
        self.rec.expect_deletion(self.live.namespace, self.live.uid)

    def deleted(self) -> None:
        self.view.put(pod("a", ready=True, deleting=True))

    async def close(self) -> None:
        for p in self.rec.pipelines.values():
            await p.close()


async def test_a_deletion_let_through_while_the_last_ones_look_is_asking_is_not_undone() -> None:
    """An eviction refused after the gate let it through, retried by `kubectl drain` just as the undo looks: the look
    has asked the API server (the pod is live: the retry is not admitted yet) when the gate lets the retry through,
    and the pod is deleted. Before, the look's answer came back and put the server into rotation again while the
    pod went away. (A drain on real nodes, bench/traffic.py, showed 3 pods whose servers went back and then left as
    pod-terminating, up to 3.3 s of requests to a pod after its SIGTERM: this is one way to that.)"""
    looks = Looks()
    looks.let_through()  # the first eviction, then refused by its budget
    await asyncio.wait_for(looks.asked.wait(), 2)
    assert A not in looks.cloud.group, "the gate's removal went"
    looks.let_through()  # the retried eviction: its servers are out already, so it goes through at once
    looks.answer.set()  # the first look's answer arrives now, after the pod was let go again
    await settle(0.02)
    looks.deleted()  # the watch shows the deletion a moment later
    await settle(0.3)  # past the second look's time too: it sees the pod going away
    assert A not in looks.cloud.group and looks.cloud.adds() == [], "a look put the server back"
    await looks.close()


async def test_a_retried_deletion_refused_again_is_still_undone() -> None:
    """The same, but the retry is refused too (the budget still full): the pod stays live, and the second look, the
    one the retry set, puts the server back."""
    looks = Looks()
    looks.let_through()
    await asyncio.wait_for(looks.asked.wait(), 2)
    looks.let_through()
    looks.asked.clear()
    await asyncio.wait_for(looks.asked.wait(), 2)  # the second look asks
    looks.answer.set()
    await settle(0.3)
    assert looks.cloud.group.get(A) == ("Available", 100), "the live pod's server went back"
    await looks.close()


async def test_a_look_due_during_a_new_hold_of_the_pod_does_not_undo_it() -> None:
    """The first let-through's look falls due while a second eviction of the pod is held (its wait for a budget's
    room, or for the removal). Before, the look found the pod live (it is: its deletion is being held), put its
    servers back mid-hold, and the hold ended with the pod deleted and its server in rotation."""
    looks = Looks()
    looks.answer.set()
    looks.rec.gate(looks.live)
    looks.rec.expect_deletion(looks.live.namespace, looks.live.uid)  # the first eviction let through
    looks.rec.gate(looks.live)  # a second eviction, held (no answer yet) past the first one's look
    await settle(0.3)
    assert A not in looks.cloud.group and looks.cloud.adds() == [], "the look put the server back mid-hold"
    await looks.close()
