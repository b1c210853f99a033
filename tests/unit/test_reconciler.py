"""The reconciler's decisions over a cluster view: who owns which server, who leaves, who is only released."""

from __future__ import annotations

import asyncio
from typing import Any

from alb_membership.model.membership import ECI_ANNOTATION, endpoints_of
from alb_membership.model.owners import picks
from alb_membership.model.spec import Spec
from alb_membership.model.status import to_status
from tests.unit.fakes import RecordingKube, RecordingReconciler, View, pod, resource, selected

UID = "sgm-uid-1"


def members(rec: RecordingReconciler, uid: str = UID) -> dict[str, Any]:
    state = rec.resources[uid]
    return to_status(state, rec.ledger(state.group))["members"]


def pending(rec: RecordingReconciler, uid: str = UID) -> dict[str, Any]:
    state = rec.resources[uid]
    return to_status(state, rec.ledger(state.group))["pending"]


async def events(kube: RecordingKube) -> list[str]:
    await asyncio.sleep(0)  # Events are posted in the background
    return [reason for _, reason, _ in kube.events]


async def test_pod_lifecycle(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a"), pod("b", ip=None), pod("other", ip="10.0.0.3", labels={"app": "api"})]
    rec.start(selected(), repair=False)
    assert set(members(rec)) == {"uid-a"}, "pods without an IP and unselected pods are no members"
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.1:8080"]
    assert pending(rec)["Ip:10.0.0.1:8080"]["trigger"] == "pod-terminating"
    rec.pod_changed(pod("a", deleting=True), deleted=True)
    assert rec.sent() == ["Ip:10.0.0.1:8080"], "the same pod is not removed twice"


async def test_host_network_pods_share_one_server(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("old", ip="10.0.0.9"), pod("new", ip="10.0.0.9")]
    rec.start(selected(), repair=False)
    rec.pod_changed(pod("old", ip="10.0.0.9", deleting=True), deleted=False)
    rec.pod_changed(pod("old", ip="10.0.0.9", deleting=True), deleted=True)
    assert rec.sent() == [], "the new pod holds the node's IP:port"
    assert set(members(rec)) == {"uid-new"}
    rec.pod_changed(pod("new", ip="10.0.0.9", deleting=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.9:8080"]


async def test_terminal_pods_seen_first_are_never_recorded(rec: RecordingReconciler, view: View) -> None:
    """Evicted or Completed pods: their old IP may be a live pod's by now."""
    view.pod_list = [pod("evicted", ip="10.0.0.5", phase="Failed"), pod("done", ip="10.0.0.6", phase="Succeeded")]
    rec.start(selected(), repair=False)
    assert rec.sent() == [] and members(rec) == {} and pending(rec) == {}


async def test_selector_edit_releases_and_revert_tracks_again(
    rec: RecordingReconciler, view: View, kube: RecordingKube
) -> None:
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    rec.start(selected(), repair=False)
    rec.start(
        resource(podSelector={"matchLabels": {"app": "other"}}, backend={"serverType": "Ip", "port": 8080}),
        repair=False,
    )
    assert rec.sent() == [] and members(rec) == {}
    assert "MemberReleased" in await events(kube)
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    assert rec.sent() == [], "a released pod is no longer tracked"
    rec.start(selected(), repair=False)
    assert set(members(rec)) == {"uid-a", "uid-b"}, "the revert tracks them again"
    rec.pod_changed(pod("b", ip="10.0.0.2", deleting=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.2:8080"]


async def test_relabelled_live_pod_is_released_not_removed(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a")]
    rec.start(selected(), repair=False)
    rec.pod_changed(pod("a", labels={"app": "debugging"}), deleted=False)
    assert rec.sent() == [] and members(rec) == {}


async def test_backend_change_rekeys_members(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a")]
    rec.start(selected(), repair=False)
    rec.start(
        resource(podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 9090}), repair=False
    )
    assert members(rec)["uid-a"]["server"] == "Ip:10.0.0.1:9090" and rec.sent() == []
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.1:9090"]


async def test_restart_repairs_what_was_missed(rec: RecordingReconciler, view: View, kube: RecordingKube) -> None:
    statics = [
        {"serverId": "i-1", "serverType": "Ecs", "port": 80},
        {"serverId": "i-2", "serverType": "Ecs", "port": 80},
    ]
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    body = selected(servers=statics)
    state = rec.start(body, repair=False)
    body["status"] = to_status(state, rec.ledger(state.group))
    # A new operator: pod a was deleted and i-2 dropped from the spec while none ran.
    fresh = RecordingReconciler(view, kube)
    view.drop("uid-a")
    body["spec"]["servers"] = statics[:1]
    fresh.start(body, repair=True)
    assert sorted(fresh.sent()) == ["Ecs:i-2:80", "Ip:10.0.0.1:8080"]
    assert {p["trigger"] for p in pending(fresh).values()} == {"pod-gone", "spec-change"}
    assert set(members(fresh)) == {"uid-b", "static/Ecs:i-1:80"}
    assert "LeakRepaired" in await events(kube)


async def test_pending_removals_go_out_again_with_their_token(
    rec: RecordingReconciler, view: View, kube: RecordingKube
) -> None:
    view.pod_list = [pod("a")]
    body = selected()
    state = rec.start(body, repair=False)
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    entry = rec.ledger(state.group).entries[next(iter(rec.ledger(state.group).entries))]
    assert entry.removal is not None
    entry.removal.client_token = "albm-tok-1"
    body["status"] = to_status(state, rec.ledger(state.group))
    fresh = RecordingReconciler(view, kube)
    fresh.start(body, repair=True)
    assert fresh.sent() == ["Ip:10.0.0.1:8080"]
    assert pending(fresh)["Ip:10.0.0.1:8080"]["clientToken"] == "albm-tok-1"


async def test_deletion_with_remove_and_with_retain(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    rec.start(selected(), repair=False)
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    assert not rec.deleting(selected(deletionPolicy="Retain")), "pod a's removal goes on under Retain"
    assert rec.sent() == ["Ip:10.0.0.1:8080"] and members(rec) == {}
    rec.ledger(rec.resources[UID].group).finished(rec.ledger(rec.resources[UID].group).pending()[0].server)
    assert rec.deleting(selected(deletionPolicy="Retain"))


async def test_deletion_reads_the_spec_of_the_delete(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a")]
    rec.start(selected(deletionPolicy="Retain"), repair=False)
    assert not rec.deleting(selected(deletionPolicy="Remove"))
    assert rec.sent() == ["Ip:10.0.0.1:8080"]


async def test_two_resources_on_one_group_remove_a_shared_server_once(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a")]
    rec.start(selected(), repair=False)
    rec.start(
        resource(
            uid="sgm-uid-2", name="web-svc", serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080}
        ),
        repair=False,
    )
    view.slices[("shop", "web")] = endpoints_of(
        {"endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a", "uid": "uid-a"}}]}
    )
    rec.endpoints_changed("shop", "web")
    assert set(members(rec, "sgm-uid-2")) == {"endpoint/web/uid-a"}
    rec.deleting(
        resource(
            uid="sgm-uid-2", name="web-svc", serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080}
        )
    )
    assert rec.sent() == [], "the other resource's live pod holds the server"
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.1:8080"]


async def test_holders_span_every_resource_on_the_group(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a", namespace="shop"), pod("c", ip="10.0.0.1", namespace="other")]
    view.bodies = [
        selected(),
        resource(
            uid="sgm-uid-2",
            namespace="other",
            podSelector={"matchLabels": {"app": "web"}},
            backend={"serverType": "Ip", "port": 8080},
        ),
    ]
    state = rec.start(selected(), repair=False)
    holders = rec.directory.holders(rec.ledger(state.group))
    assert {key for owners in holders.values() for key in owners} == {(UID, "uid-a"), ("sgm-uid-2", "uid-c")}


async def test_endpoint_moving_between_slices_is_not_removed(rec: RecordingReconciler, view: View) -> None:
    body = resource(serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080})
    bare = {"addresses": ["10.0.0.7"]}
    with_pod = {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a", "uid": "uid-a"}}
    view.pod_list = [pod("a")]
    view.slices[("shop", "web")] = endpoints_of({"endpoints": [bare, with_pod]})
    rec.start(body, repair=False)
    assert set(members(rec)) == {"endpoint/web/10.0.0.7", "endpoint/web/uid-a"}
    view.slices[("shop", "web")] = []  # removed from slice A; slice B's update has not arrived yet
    rec.endpoints_changed("shop", "web")
    assert rec.sent() == []
    view.slices[("shop", "web")] = endpoints_of({"endpoints": [bare, with_pod]})  # now in slice B
    rec.endpoints_changed("shop", "web")
    await asyncio.sleep(0.4)  # past the grace period: the recheck finds both
    assert rec.sent() == [] and len(members(rec)) == 2
    view.slices[("shop", "web")] = endpoints_of({"endpoints": [with_pod]})  # the bare endpoint really goes
    rec.endpoints_changed("shop", "web")
    await asyncio.sleep(0.4)
    assert rec.sent() == ["Ip:10.0.0.7:8080"]


async def test_endpoint_leaves_with_its_pod(rec: RecordingReconciler, view: View) -> None:
    body = resource(serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080})
    view.pod_list = [pod("a")]
    view.slices[("shop", "web")] = endpoints_of(
        {"endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a", "uid": "uid-a"}}]}
    )
    rec.start(body, repair=False)
    view.put(pod("a", deleting=True))
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    assert rec.sent() == ["Ip:10.0.0.1:8080"], "the pod's deletion is seen before the slice says terminating"


async def test_service_ref_removed_releases_its_endpoints(rec: RecordingReconciler, view: View) -> None:
    view.slices[("shop", "web")] = endpoints_of({"endpoints": [{"addresses": ["10.0.0.7"]}]})
    rec.start(resource(serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080}), repair=False)
    rec.start(
        resource(
            servers=[{"serverId": "i-1", "serverType": "Ecs", "port": 80}], backend={"serverType": "Ip", "port": 8080}
        ),
        repair=False,
    )
    assert rec.sent() == [] and set(members(rec)) == {"static/Ecs:i-1:80"}


async def test_unmappable_pod_warns_once(rec: RecordingReconciler, view: View, kube: RecordingKube) -> None:
    view.pod_list = [pod("a")]
    rec.start(
        resource(podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Eci", "port": 80}), repair=False
    )
    rec.pod_changed(pod("a"), deleted=False)
    assert (await events(kube)).count("UnmappablePod") == 1 and members(rec) == {}
    rec.pod_changed(pod("b", annotations={ECI_ANNOTATION: "eci-b"}), deleted=False)
    assert members(rec)["uid-b"]["server"] == "Eci:eci-b:80"


async def test_a_pod_seen_terminating_after_its_removal_is_not_removed_again(
    rec: RecordingReconciler, view: View
) -> None:
    """A pod stays Terminating for its grace period; every update of it after its job succeeded is old news."""
    view.pod_list = [pod("a")]
    state = rec.start(selected(), repair=False)
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    ledger = rec.ledger(state.group)
    ledger.finished(ledger.pending()[0].server)
    view.put(pod("a", deleting=True))
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    rec.start(selected(), repair=True)  # a sync sees it too
    assert rec.sent() == ["Ip:10.0.0.1:8080"] and pending(rec) == {}
    rec.pod_changed(pod("a", deleting=True), deleted=True)
    assert ledger.done_ids(UID) == [], "the marker goes with the pod"


async def test_switching_service_ref_releases_address_only_endpoints(rec: RecordingReconciler, view: View) -> None:
    view.slices[("shop", "web")] = endpoints_of({"endpoints": [{"addresses": ["10.0.0.7"]}]})
    rec.start(resource(serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080}), repair=False)
    rec.start(resource(serviceRef={"name": "api"}, backend={"serverType": "Ip", "port": 8080}), repair=False)
    await asyncio.sleep(0.4)  # past the endpoints' grace period
    assert rec.sent() == [] and members(rec) == {}


async def test_a_static_server_put_back_before_its_removal_went_out_stays(rec: RecordingReconciler) -> None:
    one = [{"serverId": "i-1", "serverType": "Ecs", "port": 80}]
    rec.start(resource(servers=[*one, {"serverId": "i-2", "serverType": "Ecs", "port": 80}]), repair=False)
    rec.start(resource(servers=one), repair=False)
    assert rec.sent() == ["Ecs:i-2:80"]
    rec.start(resource(servers=[*one, {"serverId": "i-2", "serverType": "Ecs", "port": 80}]), repair=False)
    assert pending(rec) == {} and set(members(rec)) == {"static/Ecs:i-1:80", "static/Ecs:i-2:80"}


async def test_a_replica_that_stopped_acting_changes_nothing(rec: RecordingReconciler, view: View) -> None:
    view.pod_list = [pod("a")]
    rec.start(selected(), repair=False)
    rec.stopped = True
    rec.pod_changed(pod("a", deleting=True), deleted=False)
    rec.endpoints_changed("shop", "web")
    assert rec.sent() == [] and not rec.deleting(selected())


async def test_the_gate_takes_a_pod_out_of_every_resource_that_picks_it(rec: RecordingReconciler, view: View) -> None:
    """A pod picked by a gated resource and by another one on the same group: its deletion is held, so both of its
    owners leave now; the last check before the call does not count it as a holder."""
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    gated_body = selected(deletionGate={"enabled": True, "maxWaitSeconds": 10})
    rec.start(gated_body, repair=False)
    other = resource(
        uid="sgm-uid-2", name="web-svc", serviceRef={"name": "web"}, backend={"serverType": "Ip", "port": 8080}
    )
    view.slices[("shop", "web")] = endpoints_of(
        {"endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a", "uid": "uid-a"}}]}
    )
    rec.start(other, repair=False)
    view.bodies = [gated_body, other]
    leaving = rec.gate(pod("a"))
    assert [s.compact for _, s in leaving] == ["Ip:10.0.0.1:8080"]
    assert rec.sent() == ["Ip:10.0.0.1:8080"]
    state = rec.resources[UID]
    holders = rec.directory.holders(rec.ledger(state.group))
    assert "Ip:10.0.0.1:8080" not in {s.compact for s in holders}, "a pod being deleted holds nothing"
    assert Spec.parse(gated_body["spec"]).gate_seconds == 10.0
    assert picks(Spec.parse(other["spec"]), "shop", pod("a"), view), "picked through its Service"


async def test_a_group_recorded_missing_does_not_release_a_deletion_unasked(
    rec: RecordingReconciler, view: View
) -> None:
    """A Degraded=ResourceNotFoundServerGroup in status is an earlier answer (the group may exist again): deleting
    the resource on its word would release the finalizer with the members still in the group."""
    view.pod_list = [pod("a")]
    body = selected(deletionPolicy="Remove")
    body["status"] = {
        "members": {"uid-a": {"server": "Ip:10.0.0.1:8080", "source": "pod", "pod": "a"}},
        "conditions": [
            {"type": "Degraded", "status": "True", "reason": "ResourceNotFoundServerGroup", "message": "gone"}
        ],
    }
    assert not rec.deleting(body), "the member's removal goes out first"
    assert rec.sent() == ["Ip:10.0.0.1:8080"]
