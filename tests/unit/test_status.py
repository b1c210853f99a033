"""Status as the ledger shows it: bounded, compact, restorable, and written as merge patches of what changed."""

from __future__ import annotations

import json

from alb_membership.alb.models import Server
from alb_membership.cluster.status_writer import merge_patch
from alb_membership.model.ledger import GroupLedger, now
from alb_membership.model.spec import Ref, Spec
from alb_membership.model.state import MAX_JOBS, JobRecord, ResourceState
from alb_membership.model.status import fit, restore, to_status

UID = "sgm-uid-1"
KEY = ("cn-hangzhou", "sgp-test00000001")


def state() -> ResourceState:
    return ResourceState(Ref("shop", "web", UID), Spec.parse({"serverGroupId": KEY[1]}), KEY)


def pod_uid(i: int) -> str:
    return f"{i:08d}-1111-2222-3333-444444444444"


def test_round_trip_keeps_members_pending_tokens_and_jobs() -> None:
    g, st = GroupLedger(KEY), state()
    g.hold((UID, "uid-a"), Server("Ip", "10.0.0.1", 8080), "pod", "web-a")
    g.hold((UID, "uid-b"), Server("Eni", "eni-1", 80, "10.0.0.2"), "pod", "web-b")
    g.leave((UID, "uid-b"), "pod-terminating")
    g.entries[Server("Eni", "eni-1", 80, "10.0.0.2")].removal.client_token = "albm-t"  # type: ignore[union-attr]
    st.add_job(JobRecord("job-1", "albm-t", ["Eni:eni-1:80:10.0.0.2"], "pod-terminating", now()))
    st.set_condition("Ready", "True", "Reconciled", "fine")
    out = json.loads(json.dumps(to_status(st, g)))
    assert out["members"] == {"uid-a": {"server": "Ip:10.0.0.1:8080", "source": "pod", "pod": "web-a"}}
    assert out["pending"]["Eni:eni-1:80:10.0.0.2"]["clientToken"] == "albm-t"
    assert (out["memberCount"], out["pendingCount"]) == (1, 1)

    g2, st2 = GroupLedger(KEY), state()
    st2.restore(out)
    assert restore(g2, UID, out) == [Server("Eni", "eni-1", 80, "10.0.0.2")]
    assert to_status(st2, g2) == out


def test_restores_the_list_form_of_operator_0_1() -> None:
    old = {
        "members": [
            {"id": "uid-a", "server": {"serverType": "Ip", "serverId": "10.0.0.1", "port": 8080}, "phase": "Active"},
            {"id": "uid-x", "server": {"serverType": "Ip", "serverId": "10.0.0.9", "port": 8080}, "phase": "Removed"},
        ],
        "pending": [
            {
                "id": "uid-b",
                "server": {"serverType": "Ip", "serverId": "10.0.0.2", "port": 8080},
                "trigger": "pod-terminating",
                "clientToken": "albm-old",
                "attempt": 1,
            },
        ],
    }
    g = GroupLedger(KEY)
    assert restore(g, UID, old) == [Server("Ip", "10.0.0.2", 8080)]
    removal = g.entries[Server("Ip", "10.0.0.2", 8080)].removal
    assert removal is not None and (removal.client_token, removal.attempt) == ("albm-old", 1)
    assert g.owner_ids(UID) == ["uid-a", "uid-b"], "Removed records are not brought back"


def test_merge_patch_sends_only_what_changed() -> None:
    old = {"memberCount": 2, "members": {"a": {"server": "Ip:1:80"}, "b": {"server": "Ip:2:80"}}, "jobs": [1]}
    new = {"memberCount": 2, "members": {"b": {"server": "Ip:2:80"}, "c": {"server": "Ip:3:80"}}, "jobs": [1]}
    assert merge_patch(old, new) == {"members": {"a": None, "c": {"server": "Ip:3:80"}}}
    assert merge_patch(new, new) == {}
    assert merge_patch({"members": [1, 2]}, {"members": {"a": 1}}) == {"members": {"a": 1}}, "lists are replaced"


def test_members_beyond_the_budget_are_left_out_with_a_condition() -> None:
    g, st = GroupLedger(KEY), state()
    for i in range(300):
        g.hold((UID, pod_uid(i)), Server("Ip", f"10.1.{i // 250}.{i % 250}", 8080), "pod", f"web-{i:05d}")
    out = to_status(st, g, budget=10_000)
    assert out["memberCount"] == 300 and 0 < len(out["members"]) < 300
    assert len(json.dumps(out["members"])) <= 10_000
    assert st.conditions["StatusComplete"].reason == "StatusBudgetExceeded"
    to_status(st, g)
    assert "StatusComplete" not in st.conditions
    assert fit({}, {"a": {"x": 1}}, 100) == ({}, {"a": {"x": 1}})


def test_a_mass_removal_at_the_largest_resource_supported_fits() -> None:
    """The README's figure: 6,000 owners, all leaving at once (a scale to zero, a deletion with Remove), one batch
    of 40 written ahead of its call, with long pod names."""
    g, st = GroupLedger(KEY), state()
    servers = [Server("Ip", f"10.{100 + i // 250}.{i % 250}.{i % 200}", 8080) for i in range(6000)]
    for i, server in enumerate(servers):
        g.hold((UID, pod_uid(i)), server, "pod", f"checkout-frontend-7d9f8b6c5d-{i:05d}")
    assert len(json.dumps(to_status(st, g))) < 900 * 1024 and "StatusComplete" not in st.conditions
    for i, server in enumerate(servers):
        g.leave((UID, pod_uid(i)), "resource-deleted")
        removal = g.entries[server].removal
        if i < 40 and removal is not None:
            removal.client_token, removal.job_id = "albm-" + "f" * 59, "3b1e2c4d-aaaa-bbbb-cccc-123456789012"
    out = to_status(st, g)
    assert out["pendingCount"] == 6000 and len(out["pending"]) == 6000 and "StatusComplete" not in st.conditions
    print(f"6,000 pending removals: {len(json.dumps(out))} bytes of status")
    assert len(json.dumps(out)) < 1024 * 1024


def test_status_size_follows_the_workload_not_its_history() -> None:
    """A 200-replica Deployment rolled 100 times: the same status size after the last rollout as after the first."""
    g, st = GroupLedger(KEY), state()
    sizes = []
    for rollout in range(100):
        fresh = [
            (pod_uid(rollout * 1000 + i), Server("Ip", f"10.{100 + rollout % 100}.0.{100 + i}", 8080))
            for i in range(200)
        ]
        old = [(key, s) for key, s in ((k, g.server_of((UID, k))) for k in g.owner_ids(UID)) if s]
        for key, server in fresh:
            g.hold((UID, key), server, "pod", f"web-{key[:8]}")
        for key, server in old:
            g.leave((UID, key), "pod-terminating")
            g.finished(server)
        for i in range(MAX_JOBS):
            st.add_job(
                JobRecord(
                    f"job-{rollout:04d}-{i:02d}",
                    "albm-x" * 10,
                    [s.compact for _, s in fresh[:40]],
                    "pod-terminating",
                    now(),
                )
            )
        sizes.append(len(json.dumps(to_status(st, g))))
    assert sizes[-1] == sizes[1], sizes[:3]
    print(f"status of a 200-member resource: {sizes[-1]} bytes ({sizes[-1] / 200:.0f} per member with jobs)")
    assert sizes[-1] < 64 * 1024


def test_ipv6_members_and_removals_survive_a_restart() -> None:
    """Dual-stack pods (IPv6 ENIs on ACK): what status keeps must read back as the same servers."""
    g, st = GroupLedger(KEY), state()
    live, leaving = Server("Ip", "fd00::5", 8080), Server("Eni", "eni-1", 80, "fd00::6")
    g.hold((UID, "uid-a"), live, "pod", "web-a")
    g.hold((UID, "uid-b"), leaving, "pod", "web-b")
    g.leave((UID, "uid-b"), "pod-terminating")
    out = json.loads(json.dumps(to_status(st, g)))
    assert out["members"]["uid-a"]["server"] == "Ip:[fd00::5]:8080"
    assert list(out["pending"]) == ["Eni:eni-1:80:[fd00::6]"]

    g2 = GroupLedger(KEY)
    assert restore(g2, UID, out) == [leaving]
    assert g2.server_of((UID, "uid-a")) == live


def test_the_unbracketed_ipv6_form_earlier_operators_wrote_is_read() -> None:
    recorded = {
        "members": {"uid-a": {"server": "Ip:fd00::5:8080", "source": "pod", "pod": "web-a"}},
        "pending": {"Eni:eni-1:80:fd00::6": {"owners": ["uid-b"], "trigger": "pod-terminating", "attempt": 0}},
    }
    g = GroupLedger(KEY)
    assert restore(g, UID, recorded) == [Server("Eni", "eni-1", 80, "fd00::6")]
    assert g.server_of((UID, "uid-a")) == Server("Ip", "fd00::5", 8080)


def test_an_unreadable_record_is_skipped_and_the_rest_restored() -> None:
    recorded = {
        "members": {
            "uid-a": {"server": "Ip:10.0.0.1:8080", "source": "pod"},
            "uid-x": {"server": "Bogus:thing", "source": "pod"},
        },
        "pending": {
            "Ip:10.0.0.2:8080": {"owners": ["uid-b"], "trigger": "pod-terminating"},
            "Ip:10.0.0.3:port": {"owners": ["uid-c"], "trigger": "pod-terminating"},
        },
    }
    g = GroupLedger(KEY)
    assert restore(g, UID, recorded) == [Server("Ip", "10.0.0.2", 8080)]
    assert g.owner_ids(UID) == ["uid-a", "uid-b"]
