"""The bad-input catalogue: every kind of bad input gives a clear error and harms nothing.

- resources the API server must refuse (schema and CEL), naming the field;
- resources that are valid but make no sense here (a missing group, pods the backend cannot map);
- absurd operator settings;
- cloud answers that are truncated, not JSON, or lack what they must carry.
(The emulator's own bad configuration and admin input: tests/emulator/test_emulator_process.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import kubernetes
import pytest

from localcluster import ClusterError
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.operator import OperatorProcess
from tests.support.scenario import (
    GROUP,
    apply,
    deployment,
    events,
    in_group,
    pod_ips,
    pods_as_members,
    seed,
    sgm,
    status_when,
)

STATIC = [{"serverId": "i-1", "serverType": "Ecs", "port": 80}]
IP_BACKEND = {"serverType": "Ip", "port": 8080}


# -- resources the API server refuses -------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        (
            {"serverGroupId": "sg-wrong", "servers": [{"serverId": "i-1", "serverType": "Ecs", "port": 80}]},
            "spec.serverGroupId",
        ),
        ({"serverGroupId": GROUP}, "at least one member source"),
        ({"serverGroupId": GROUP, "podSelector": {"matchLabels": {"a": "b"}}}, "backend"),
        (
            {"serverGroupId": GROUP, "podSelector": {}, "backend": {"serverType": "Ip", "port": 70000}},
            "spec.backend.port",
        ),
        (
            {"serverGroupId": GROUP, "podSelector": {}, "backend": {"serverType": "Ecs", "port": 80}},
            "spec.backend.serverType",
        ),
        ({"serverGroupId": GROUP, "servers": [{"serverId": "i-1", "serverType": "Ecs"}]}, "spec.servers[0].port"),
        (
            {
                "serverGroupId": GROUP,
                "servers": [{"serverId": "i-1", "serverType": "Ecs", "port": 80, "serverIp": "10.0.0.1"}],
            },
            "serverIp is only for serverType Eni",
        ),
        (
            {
                "serverGroupId": GROUP,
                "servers": [{"serverId": "i-1", "serverType": "Ecs", "port": 80}],
                "deletionPolicy": "Keep",
            },
            "spec.deletionPolicy",
        ),
        ({"podSelector": {}, "backend": {"serverType": "Ip", "port": 80}}, "spec.serverGroupId: Required value"),
        ({"serverGroupId": "sgp-UPPER1234", "servers": STATIC}, "spec.serverGroupId"),
        ({"serverGroupId": GROUP, "region": "CN-Hangzhou", "servers": STATIC}, "spec.region"),
        (
            {
                "serverGroupId": GROUP,
                "podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]},
                "backend": IP_BACKEND,
            },
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            {
                "serverGroupId": GROUP,
                "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                "backend": IP_BACKEND,
            },
            "In and NotIn need values",
        ),
        (
            {
                "serverGroupId": GROUP,
                "podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
                "backend": IP_BACKEND,
            },
            "Exists and DoesNotExist take none",
        ),
        ({"serverGroupId": GROUP, "serviceRef": {}, "backend": IP_BACKEND}, "spec.serviceRef.name: Required value"),
        ({"serverGroupId": GROUP, "serviceRef": {"name": ""}, "backend": IP_BACKEND}, "spec.serviceRef.name"),
        (
            {"serverGroupId": GROUP, "servers": [{"serverId": "acs:fc:fn", "serverType": "Fc", "port": 80}]},
            "spec.servers[0].serverType",
        ),
        (
            {"serverGroupId": GROUP, "servers": [{"serverId": "i-1", "serverType": "Ecs", "port": 0}]},
            "spec.servers[0].port",
        ),
        (
            {"serverGroupId": GROUP, "servers": [{"serverId": "", "serverType": "Ecs", "port": 80}]},
            "spec.servers[0].serverId",
        ),
        ({"serverGroupId": GROUP, "servers": STATIC, "dryRun": "yes"}, "spec.dryRun"),
        (
            {"serverGroupId": GROUP, "podSelector": {}, "backend": {"serverType": "Ip", "port": "http"}},
            "spec.backend.port",
        ),
        ({"serverGroupId": GROUP, "servers": STATIC * 1001}, "spec.servers: Too many"),
        (
            {"serverGroupId": GROUP, "servers": STATIC, "registration": {"enabled": True, "weight": 101}},
            "spec.registration.weight: Invalid value: 101",
        ),
        (
            {"serverGroupId": GROUP, "servers": STATIC, "registration": {"enabled": True, "weight": -1}},
            "spec.registration.weight: Invalid value: -1",
        ),
        (
            {"serverGroupId": GROUP, "servers": STATIC, "registration": {"enabled": True, "weight": "5"}},
            "spec.registration.weight",
        ),
        (
            {"serverGroupId": GROUP, "servers": STATIC, "registration": {"enabled": "yes"}},
            "spec.registration.enabled",
        ),
        # kubectl's default (strict) field validation: a misspelt field is refused, not dropped.
        (
            {"serverGroupId": GROUP, "servers": STATIC, "registration": {"enabled": True, "wieght": 5}},
            'unknown field "spec.registration.wieght"',
        ),
        ({"serverGroupId": GROUP, "registration": {"enabled": True}}, "registration needs members it can add"),
    ],
)
def test_bad_resources_are_refused_naming_the_field(
    cluster: Cluster, crd: None, namespace: str, spec: dict[str, Any], complaint: str
) -> None:
    body = {
        "apiVersion": "albmembership.io/v1alpha1",
        "kind": "ServerGroupMembership",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(ClusterError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        apply(cluster, namespace, body)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("registration", "stored"),
    [
        ({"enabled": True}, {"enabled": True, "weight": 100}),
        ({"enabled": True, "weight": 0}, {"enabled": True, "weight": 0}),
        ({"enabled": True, "weight": 100}, {"enabled": True, "weight": 100}),
        ({}, {"enabled": False, "weight": 100}),
        (None, None),
    ],
)
def test_registration_is_accepted_with_its_defaults(
    cluster: Cluster, crd: None, namespace: str, registration: dict[str, Any] | None, stored: dict[str, Any] | None
) -> None:
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "web"}}, "backend": IP_BACKEND}
    if registration is not None:
        spec["registration"] = registration
    apply(cluster, namespace, sgm("web", **spec))
    got = json.loads(cluster.kubectl("get", "sgm", "web", "-n", namespace, "-o", "json"))["spec"]
    assert got.get("registration") == stored


@pytest.mark.integration
def test_the_crd_keeps_what_registration_writes_in_status(cluster: Cluster, crd: None, namespace: str) -> None:
    """The status schema is explicit: a field it does not list is pruned without a word. The engine's new fields
    must survive a status patch, and `kubectl get sgm` shows the In Rotation column."""
    apply(cluster, namespace, sgm("web", servers=STATIC, registration={"enabled": True}))
    status = {
        "memberCount": 2,
        "inRotationCount": 1,
        "pendingCount": 1,
        "members": {
            "static/a": {"server": "Ecs:i-1:80", "source": "static", "inGroup": "Available"},
            "static/b": {"server": "Ecs:i-2:80", "source": "static", "inGroup": "Adding"},
        },
        "pending": {
            "Ecs:i-2:80": {"action": "add", "weight": 100, "owners": ["static/b"], "trigger": "registration"},
        },
    }
    cluster.kubectl(
        "patch", "sgm", "web", "-n", namespace, "--subresource=status", "--type=merge", "-p",
        json.dumps({"status": status}),
    )  # fmt: skip
    got = json.loads(cluster.kubectl("get", "sgm", "web", "-n", namespace, "-o", "json"))["status"]
    assert got == status
    header, row = cluster.kubectl("get", "sgm", "web", "-n", namespace).splitlines()
    assert header.split() == ["NAME", "GROUP", "MEMBERS", "IN", "ROTATION", "PENDING", "LAST", "JOB", "READY", "AGE"]
    assert row.split()[2:5] == ["2", "1", "1"]


@pytest.mark.integration
def test_server_group_id_is_immutable(cluster: Cluster, crd: None, namespace: str) -> None:
    static = [{"serverId": "i-1", "serverType": "Ecs", "port": 80}]
    apply(cluster, namespace, sgm("web", servers=static))
    moved = sgm("web", servers=static)
    moved["spec"]["serverGroupId"] = "sgp-other00000001"
    with pytest.raises(ClusterError, match="serverGroupId is immutable"):
        apply(cluster, namespace, moved)


# -- valid, but nothing can be done with it -----------------------------------------------------------------------


@pytest.mark.integration
def test_pods_the_backend_cannot_map_are_reported_once_and_left_alone(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    apply(cluster, namespace, deployment("web", 2))
    ips = pod_ips(core, namespace, "web", 2)
    seed(emulator, list(ips.values()))
    apply(
        cluster,
        namespace,
        sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Eci", "port": 80}),
    )
    wait_for(lambda: events(cluster, namespace).count("UnmappablePod") == 2, "one warning per pod")
    core.delete_namespaced_pod(sorted(ips)[0], namespace)
    # Nothing to remove and nothing removed: the pods never mapped to a server.
    status_when(cluster, namespace, lambda s: s.get("memberCount") == 0 and not s.get("pending"), "no members")
    assert emulator.requests("RemoveServersFromServerGroup") == []
    assert set(ips.values()) <= in_group(emulator)


@pytest.mark.integration
def test_service_that_does_not_exist_means_no_members(
    cluster: Cluster, emulator: EmulatorProcess, namespace: str, operator: OperatorProcess
) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    apply(
        cluster, namespace, sgm("web", serviceRef={"name": "nothing-here"}, backend={"serverType": "Ip", "port": 8080})
    )
    st = status_when(cluster, namespace, lambda s: s.get("conditions"), "the resource to be taken up")
    assert st["memberCount"] == 0
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    assert emulator.requests("RemoveServersFromServerGroup") == []


# -- absurd settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--batch-size", "0"], "--batch-size: 0 must be between 1 and 200"),
        (["--batch-size", "500"], "--batch-size: 500 must be between 1 and 200"),
        (["--coalesce-seconds", "-1"], "--coalesce-seconds: -1 must be between 0 and 10"),
        (["--api-rate-limit", "0"], "--api-rate-limit: 0 must be at least 1"),
        (["--job-poll-seconds", "fast"], "--job-poll-seconds: 'fast' is not a float"),
        (["--metrics-port", "70000"], "--metrics-port: 70000 must be between 0 and 65535"),
        (["--endpoint", "ftp://alb"], "endpoint 'ftp://alb' must be http(s)://host[:port]"),
        (["--region", "Hangzhou!"], "region 'Hangzhou!' does not look like a region id"),
        (["--log-format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_absurd_settings_are_refused_before_anything_starts(args: list[str], complaint: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "alb_membership", "run", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert complaint in proc.stderr


def test_absurd_settings_from_the_environment_are_refused_too() -> None:
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "alb_membership", "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "ALBM_BATCH_SIZE": "1000"},
    )
    assert proc.returncode == 2
    assert "1000 must be between 1 and 200" in proc.stderr


# -- broken answers from the cloud -----------------------------------------------------------------------------


@pytest.mark.integration
def test_broken_cloud_answers_are_retried_and_make_one_job(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    ips = pods_as_members(cluster, core, emulator, namespace, 1)
    emulator.admin(
        "PUT",
        "faults",
        {
            "script": [
                {"kind": "truncated"},  # a JobId cut off mid-answer
                {"kind": "http", "status": 502, "body": "<html>502 Bad Gateway</html>"},  # a proxy's page
                {"kind": "http", "status": 200, "body": '{"RequestId": "no-job-id"}'},  # JSON without a JobId
                {"kind": "http", "status": 200, "body": "not json at all"},  # ListAsynJobs: garbage
                {"kind": "http", "status": 200, "body": '{"Jobs": "not a list"}'},  # ListAsynJobs: wrong shape
            ]
        },
    )
    core.delete_namespaced_pod(next(iter(ips)), namespace)
    st = status_when(
        cluster,
        namespace,
        lambda s: s.get("jobs") and s["jobs"][0]["status"] == "Succeeded",
        "the removal to succeed despite the broken answers",
    )
    assert not set(ips.values()) & in_group(emulator)
    assert len(emulator.admin("GET", "jobs")) == 1, "broken answers never cost a second job"
    assert len({r["client_token"] for r in emulator.requests("RemoveServersFromServerGroup")}) == 1
    assert st["conditions"]
