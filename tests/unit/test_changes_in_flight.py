"""What happens to a change while the cloud is asked about it (found by a review of the CI failure of
test_status_stays_bounded_over_many_rollouts): owners of another resource that join it, a live owner seen during
the last read before the call, a pod the gate let go that turns out live before its removal went out. The real
Reconciler and GroupPipeline over the fake cloud of tests/unit/fake_cloud.py."""

from __future__ import annotations

import dataclasses
from typing import Any

from alb_membership.engine.reconciler import Reconciler
from alb_membership.model.membership import EndpointView
from alb_membership.model.status import to_status
from tests.unit.fake_cloud import FAST, UID, A, Cloud, reconciler, settle, written
from tests.unit.fakes import RecordingKube, View, pod, resource

WEB, SVC = "uid-web", "uid-svc"
IP_BACKEND = {"serverType": "Ip", "port": 8080}


def pods_and_endpoints(rec: Reconciler, view: View) -> None:
    """``web`` picks the pods by label, ``web-svc`` the endpoints of Service ``web``: one group, one pod "a"."""
    view.pod_list = [pod("a", ready=True)]
    view.slices[("shop", "web")] = [EndpointView("10.0.0.1", False, "a", "uid-a")]
    web = resource(uid=WEB, name="web", podSelector={"matchLabels": {"app": "web"}}, backend=IP_BACKEND)
    svc = resource(uid=SVC, name="web-svc", serviceRef={"name": "web"}, backend=IP_BACKEND)
    view.bodies = [web, svc]
    rec.start(web, repair=False)
    rec.start(svc, repair=False)


def finish(cloud: Cloud, kind: str) -> None:
    for job, (what, _, _) in list(cloud.jobs.items()):
        if what == kind:
            cloud.finish(job)


async def close(rec: Reconciler) -> None:
    for pipeline in rec.pipelines.values():
        await pipeline.close()


async def test_an_endpoint_that_joins_an_addition_in_flight_hears_of_its_end() -> None:
    """A pod reuses the IP of one whose removal is out: the pod's resource puts the server back (an undo) and the
    Service's endpoint of the new pod joins that addition while its job runs. Before: only the pod's resource heard
    of the job's end, and web-svc's status showed the addition pending (with its token and job) for good."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.instant = False
    cloud.group[A] = ("Available", 100)
    rec = reconciler(cloud, view, kube)
    pods_and_endpoints(rec, view)
    await settle(0.1)
    leaving = pod("a", ready=True, deleting=True)
    view.put(leaving)
    rec.pod_changed(leaving, deleted=False)
    view.slices[("shop", "web")] = [EndpointView("10.0.0.1", True, "a", "uid-a")]
    rec.endpoints_changed("shop", "web", None)
    await settle(0.2)
    view.drop("uid-a")
    reused = pod("b", ready=True)  # the same IP
    view.put(reused)
    rec.pod_changed(reused, deleted=False)
    await settle(0.1)
    finish(cloud, "remove")
    await settle(0.3)
    assert [kind for kind, _, _ in cloud.calls] == ["remove", "add"], "the removal undone for the new pod"
    view.slices[("shop", "web")] = [EndpointView("10.0.0.1", False, "b", "uid-b")]
    rec.endpoints_changed("shop", "web", {"uid-a", "uid-b"})
    await settle(0.2)
    assert written(kube, SVC)["pending"], "web-svc's endpoint of b joined the addition"
    finish(cloud, "add")
    await settle(0.5)
    for uid in (WEB, SVC):
        assert written(kube, uid)["pending"] == {}, uid
        assert set(written(kube, uid)["members"]) == {"uid-b" if uid == WEB else "endpoint/web/uid-b"}
    await close(rec)


async def test_a_live_owner_seen_during_the_last_read_before_the_call_keeps_its_server() -> None:
    """The pipeline reads an unknown weight right before a removal's call (an undo would need it). A pod that
    reuses the IP, seen during that read, calls the removal off. Before: the call still took its server out (and
    an undo put it back later); with registration, an addition decided meanwhile went under the removal's token."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("a", ready=True)]
    rec.start(resource(podSelector={"matchLabels": {"app": "web"}}, backend=IP_BACKEND), repair=False)
    await settle(0.1)
    reused = pod("b", ready=True)
    read = cloud.listed_servers

    async def listed(group_id: str, servers: Any = (), *, deadline: float | None = None) -> Any:
        answer = await read(group_id, servers, deadline=deadline)
        if reused not in view.pod_list:  # the new pod is seen while the read is out
            view.drop("uid-a")
            view.put(reused)
            rec.pod_changed(reused, deleted=False)
        return answer

    cloud.listed_servers = listed  # type: ignore[method-assign]
    leaving = pod("a", ready=True, deleting=True)
    view.put(leaving)
    rec.pod_changed(leaving, deleted=False)
    await settle(0.5)
    assert cloud.calls == [], "no call: b holds the server"
    assert cloud.group[A] == ("Available", 100)
    entry = rec.ledger(rec.resources[UID].group).entries[A]
    assert entry.removal is None and entry.live_owners() == [(UID, "uid-b")]
    await close(rec)


async def test_a_pod_the_gate_let_go_that_turns_out_live_before_its_removal_went_out_has_its_status_written() -> None:
    """The gate decided the pod's removal; the pod turned out live before the call went out (coalescing), so the
    removal is called off. Before: no round wrote that, and status kept the removal pending (deletion-gate) for a
    successor to send."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)
    rec = reconciler(cloud, view, kube, dataclasses.replace(FAST, coalesce_seconds=1.0))
    live = pod("a", ready=True)
    view.pod_list = [live]
    gated = resource(podSelector={"matchLabels": {"app": "web"}}, backend=IP_BACKEND, deletionGate={"enabled": True})
    rec.start(gated, repair=False)
    await settle(0.1)
    rec.gate(live)
    await settle(0.2)
    assert written(kube, UID)["pending"], "the gate's removal is written ahead"
    rec.ungate(live)
    await settle(0.3)
    assert written(kube, UID)["pending"] == {} and set(written(kube, UID)["members"]) == {"uid-a"}
    assert to_status(rec.resources[UID], rec.ledger(rec.resources[UID].group))["pending"] == {}
    await settle(1.0)
    assert cloud.calls == []
    await close(rec)


async def test_a_removal_one_resource_decided_and_another_resources_pod_called_off_leaves_neither_status_stale() -> (
    None
):
    """web-svc's endpoint of "a" turned terminating (a removal decided, not sent yet: coalescing) while web, which
    picks pods, had already let "a" go; a new pod reusing the IP, seen by web, calls the removal off. Before: only
    web's status was written, and web-svc's kept the removal pending."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    cloud.group[A] = ("Available", 100)
    rec = reconciler(cloud, view, kube, dataclasses.replace(FAST, coalesce_seconds=1.0))
    pods_and_endpoints(rec, view)
    await settle(0.1)
    leaving = pod("a", ready=True, deleting=True)
    view.put(leaving)
    rec.pod_changed(leaving, deleted=False)
    await settle(0.2)
    assert written(kube, SVC)["pending"], "web-svc's endpoint decided the removal"
    view.drop("uid-a")
    reused = pod("b", ready=True)
    view.put(reused)
    rec.pod_changed(reused, deleted=False)
    await settle(0.2)
    assert written(kube, SVC)["pending"] == {}, "web-svc's status no longer shows the removal"
    await settle(1.0)
    assert cloud.calls == []
    await close(rec)


async def test_an_endpoint_that_joins_a_removal_while_its_call_is_out_hears_the_server_was_gone() -> None:
    """web-svc starts, and first sees the endpoint of "a" terminating, while web's removal call for "a" is out; the
    cloud answers that the server was gone already. Before: only web heard, and web-svc's status kept the removal
    pending (with its token) and never counted it."""
    cloud, view, kube = Cloud(), View(), RecordingKube()  # A is not in the group: the removal is already done
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("a", ready=True)]
    web = resource(podSelector={"matchLabels": {"app": "web"}}, backend=IP_BACKEND)
    svc = resource(uid=SVC, name="web-svc", serviceRef={"name": "web"}, backend=IP_BACKEND)
    view.bodies = [web]
    rec.start(web, repair=False)
    await settle(0.1)
    remove = cloud.remove_servers

    async def slow_remove(group_id: str, servers: Any, token: str, *, dry_run: bool = False) -> Any:
        view.slices[("shop", "web")] = [EndpointView("10.0.0.1", True, "a", "uid-a")]
        view.bodies = [web, svc]
        rec.start(svc, repair=False)
        await settle(0.2)
        return await remove(group_id, servers, token, dry_run=dry_run)

    cloud.remove_servers = slow_remove  # type: ignore[method-assign]
    leaving = pod("a", ready=True, deleting=True)
    view.put(leaving)
    rec.pod_changed(leaving, deleted=False)
    await settle(0.8)
    assert [kind for kind, _, _ in cloud.calls] == ["remove"]
    assert not rec.ledger(rec.resources[UID].group).entries
    assert written(kube, SVC)["pending"] == {}
    await close(rec)


async def test_a_pod_that_leaves_during_the_read_before_its_addition_is_not_added() -> None:
    """Registration reads a server never read before its addition; the pod starts terminating during that read,
    so a removal takes the addition's place. Before: the call added the leaving pod's server, with the removal
    under the addition's token."""
    cloud, view, kube = Cloud(), View(), RecordingKube()
    rec = reconciler(cloud, view, kube)
    view.pod_list = [pod("a", ready=True)]
    read = cloud.listed_servers
    gone = pod("a", ready=True, deleting=True)

    async def listed(group_id: str, servers: Any = (), *, deadline: float | None = None) -> Any:
        answer = await read(group_id, servers, deadline=deadline)
        if gone not in view.pod_list:
            view.put(gone)
            rec.pod_changed(gone, deleted=False)
        return answer

    cloud.listed_servers = listed  # type: ignore[method-assign]
    body = resource(
        podSelector={"matchLabels": {"app": "web"}}, backend=IP_BACKEND, registration={"enabled": True, "weight": 100}
    )
    view.bodies = [body]
    rec.start(body, repair=False)
    await settle(0.8)
    assert [kind for kind, _, _ in cloud.calls if kind == "add"] == [], cloud.calls
    assert A not in cloud.group
    await close(rec)
