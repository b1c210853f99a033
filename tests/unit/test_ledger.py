"""The group ledger's rule: a server leaves only when no owner of its identity is live, across resources."""

from __future__ import annotations

import datetime as dt
import json

from alb_membership.alb.models import Server
from alb_membership.engine import outcomes
from alb_membership.engine.batches import token_for
from alb_membership.model.ledger import GroupLedger, Removal, now
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import ResourceState
from alb_membership.model.status import restore, to_status

NODE = Server("Ip", "10.0.0.9", 8080)
A, B = ("sgm-1", "pod-a"), ("sgm-1", "pod-b")


def ledger() -> GroupLedger:
    return GroupLedger(("cn-hangzhou", "sgp-test00000001"))


def test_shared_identity_leaves_with_its_last_live_owner() -> None:
    """hostNetwork pods on one node: one identity, two owners."""
    g = ledger()
    g.hold(A, NODE, "pod")
    g.hold(B, NODE, "pod")
    assert not g.leave(A, "pod-terminating"), "B still holds the server"
    assert g.server_of(A) is None and g.entries[NODE].removal is None
    assert g.leave(B, "pod-terminating")
    assert g.entries[NODE].removal is not None and g.entries[NODE].leaving_owners() == [B]


def test_an_owner_done_remembers_the_server_only_if_its_removal_took_it_out() -> None:
    """What the deletion gate confirms by a listing for a pod whose removal is final (engine/reconciler.py gate):
    a server taken out, never one another owner kept or a dry run only prechecked."""
    g = ledger()
    g.hold(A, NODE, "pod")
    g.hold(B, NODE, "pod")
    assert not g.leave(A, "pod-terminating")
    assert g.done_source(A) == "pod" and g.removed_server(A) is None, "kept by B"
    assert g.leave(B, "pod-terminating")
    g.finished(NODE)
    assert g.removed_server(B) == NODE
    dry = ("sgm-1", "pod-c")
    g.hold(dry, NODE, "pod")  # the IP again, under a dry run: the precheck passes, nothing is taken out
    assert g.leave(dry, "pod-terminating")
    outcomes.record_dry_run([g.entries[NODE]], [], g, "token")
    assert g.done_source(dry) == "pod" and g.removed_server(dry) is None
    g.settle(B)
    assert g.removed_server(B) is None and g.done_source(B) is None, "its pod is gone: forgotten"


def test_a_dry_run_that_a_live_owner_came_to_hold_undoes_nothing() -> None:
    """A pod reusing the IP while a dry run's call was out: nothing was taken out, so nothing goes back in."""
    g = ledger()
    g.hold(A, NODE, "pod")
    g.seen_in_group(NODE, "Available", 100)
    assert g.leave(A, "pod-terminating")
    removal = g.entries[NODE].removal
    assert removal is not None
    removal.client_token = "token"  # the call is out
    g.hold(B, NODE, "pod")
    outcomes.record_dry_run([g.entries[NODE]], [], g, "token")
    entry = g.entries[NODE]
    assert entry.removal is None and entry.undo is None and entry.in_group == "Available"
    assert entry.live_owners() == [B]


def test_a_live_owner_calls_off_a_removal_not_sent_yet() -> None:
    """A pod IP reused by a new pod while the old pod's removal waited (busy group, throttling)."""
    g = ledger()
    g.hold(A, NODE, "pod")
    assert g.leave(A, "pod-terminating")
    g.hold(B, NODE, "pod")
    entry = g.entries[NODE]
    assert entry.removal is None and entry.live_owners() == [B] and g.server_of(A) is None


def test_a_live_owner_after_the_call_went_out_stays_recorded() -> None:
    g = ledger()
    g.hold(A, NODE, "pod")
    g.leave(A, "pod-terminating")
    removal = g.entries[NODE].removal
    assert removal is not None
    removal.client_token = "albm-x"  # written ahead: the call may be out
    g.hold(B, NODE, "pod")
    assert g.entries[NODE].removal is removal, "too late to stop; the pipeline's last check runs before the call"
    overtaken = g.finished(NODE)
    assert overtaken is not None and overtaken.live_owners() == [B] and g.server_of(B) == NODE


def test_cancel_held_uses_the_cluster_view_even_for_restored_removals() -> None:
    """A successor operator must not send a recorded removal when a live pod holds the server now."""
    g = ledger()
    g.restore(A, NODE, "pod", "a", Removal("pod-gone", now(), attempt=1, client_token="albm-old"))
    assert g.cancel_held(NODE, {("sgm-2", "pod-c"): ("pod", "c")})
    assert g.entries[NODE].removal is None and g.server_of(("sgm-2", "pod-c")) == NODE


def test_release_never_removes_and_leaves_nothing_behind() -> None:
    g = ledger()
    g.hold(A, NODE, "pod")
    assert g.release(A)
    assert NODE not in g.entries and g.owner_ids("sgm-1") == []
    g.hold(A, NODE, "pod")
    g.leave(A, "pod-terminating")
    assert not g.release(A), "a terminating pod still leaves, whatever happens to the spec"


def test_unrecorded_owners_are_never_acted_on() -> None:
    g = ledger()
    assert not g.leave(A, "pod-gone")
    assert g.entries == {}


def test_rekeyed_owner_lets_the_old_identity_go_without_removal() -> None:
    g = ledger()
    g.hold(A, NODE, "pod")
    new = Server("Ip", "10.0.0.9", 9090)
    g.hold(A, new, "pod")
    assert NODE not in g.entries and g.server_of(A) == new


def test_retry_gives_a_new_attempt_and_a_new_token() -> None:
    g = ledger()
    g.hold(A, NODE, "pod")
    g.leave(A, "pod-terminating")
    first = token_for([g.entries[NODE]])
    g.entries[NODE].removal.client_token = first  # type: ignore[union-attr]
    g.new_attempt(NODE)
    assert g.entries[NODE].removal.client_token is None  # type: ignore[union-attr]
    assert token_for([g.entries[NODE]]) != first


def test_tokens_come_from_uids_and_attempts() -> None:
    g = ledger()
    other = Server("Ip", "10.0.0.8", 8080)
    for key, server in ((A, NODE), (B, other)):
        g.hold(key, server, "pod")
        g.leave(key, "pod-terminating")
    both = token_for([g.entries[NODE], g.entries[other]])
    assert both == token_for([g.entries[other], g.entries[NODE]]) and len(both) <= 64
    reuse = ledger()
    reuse.hold(("sgm-1", "pod-new"), NODE, "pod")
    reuse.leave(("sgm-1", "pod-new"), "pod-terminating")
    assert token_for([reuse.entries[NODE]]) != token_for([g.entries[NODE]]), "a new pod on an old IP: new token"
    elsewhere = ledger()
    elsewhere.hold(("sgm-2", "pod-a"), NODE, "pod")
    elsewhere.leave(("sgm-2", "pod-a"), "pod-terminating")
    assert token_for([elsewhere.entries[NODE]]) != token_for([g.entries[NODE]]), "the resource UID counts"


def test_eni_identity_includes_the_ip() -> None:
    g = ledger()
    first, second = Server("Eni", "eni-1", 80, "10.0.0.1"), Server("Eni", "eni-1", 80, "10.0.0.2")
    g.hold(A, first, "pod")
    g.hold(B, second, "pod")
    assert g.leave(A, "pod-terminating"), "another IP on the same ENI is another server"


def test_forgetting_a_resource_drops_its_owners_and_its_removals() -> None:
    g = ledger()
    g.hold(A, NODE, "pod")
    g.leave(A, "resource-deleted")
    g.hold(("sgm-2", "static/x"), Server("Ecs", "i-1", 80), "static")
    g.forget_resource("sgm-1")
    assert set(g.entries) == {Server("Ecs", "i-1", 80)}


def test_identities_per_mib() -> None:
    """The ledger's memory per identity, for the README's sizing figure."""
    import tracemalloc

    tracemalloc.start()
    g = ledger()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(5000):
        g.hold(
            ("sgm-1", f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd"),
            Server("Ip", f"10.1.{i // 250}.{i % 250}", 8080),
            "pod",
            f"web-5d8f7c9b4-{i:05d}",
        )
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_mib = 5000 * 1024 * 1024 / used
    print(f"ledger: {used / 5000:.0f} bytes per identity, {per_mib:.0f} identities per MiB")
    assert per_mib > 1000


def test_owners_removed_are_not_acted_on_again_until_they_are_gone() -> None:
    g = ledger()
    g.hold(A, NODE, "pod")
    g.leave(A, "pod-terminating")
    g.finished(NODE)
    assert not g.leave(A, "pod-terminating", server=NODE), "still Terminating after its job: not a new removal"
    assert g.done_ids("sgm-1") == [("pod-a", "pod")]
    g.settle(A)
    assert g.done_ids("sgm-1") == []


def test_an_owner_that_left_beside_a_live_one_is_not_acted_on_again() -> None:
    """A pod that is also a Service endpoint: the pod leaves first, the endpoint holds the server a moment longer."""
    g = ledger()
    g.hold(A, NODE, "pod")
    g.hold(("sgm-2", "endpoint/pod-a"), NODE, "endpoint")
    assert not g.leave(A, "pod-terminating")
    assert g.leave(("sgm-2", "endpoint/pod-a"), "endpoint-terminating")
    g.finished(NODE)
    assert not g.leave(A, "pod-terminating", server=NODE), "the pod's next update is not a second removal"


def test_a_second_removal_of_the_same_owner_gets_a_new_token() -> None:
    """A static server dropped, put back and dropped again: the cloud would answer the first removal's token
    with the first job, and the server would stay while status said Succeeded."""
    g = ledger()
    static = ("sgm-1", f"static/{NODE.compact}")
    g.hold(static, NODE, "static")
    assert g.leave(static, "spec-change")
    removal = g.entries[NODE].removal
    assert removal is not None
    removal.decided_at -= dt.timedelta(seconds=2)  # a job's time at least passes before it can have succeeded
    first = token_for([g.entries[NODE]])
    g.entries[NODE].removal.client_token = first  # type: ignore[union-attr]
    g.finished(NODE)  # the first removal succeeded
    g.hold(static, NODE, "static")  # put back (someone added it again)
    assert g.leave(static, "spec-change")
    assert token_for([g.entries[NODE]]) != first


def test_a_restored_removal_keeps_its_token_seed() -> None:
    """The decision's time is in status: a successor operator computes the same token for the same removal."""
    g = ledger()
    g.hold(A, NODE, "pod")
    g.leave(A, "pod-terminating")
    st = ResourceState(Ref("shop", "web", A[0]), Spec.parse({"serverGroupId": g.group_id}), g.key)
    recorded = json.loads(json.dumps(to_status(st, g)))
    again = ledger()
    assert restore(again, A[0], recorded) == [NODE]
    assert token_for([again.entries[NODE]]) == token_for([g.entries[NODE]])
