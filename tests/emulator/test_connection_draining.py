"""Connection draining in the emulator: ConnectionDrainConfig per group (config file, admin API, ListServerGroups in
the SDK's field names), removed servers draining on the clock and then gone, draining cut short for servers marked
idle, and the three UNCONFIRMED knobs in every combination, through the official SDK and through the operator's own
removal pipeline: ``drain_status`` (what a draining server shows: ``Removing`` until gone, the default, as the ALB
SDK's status enum has it, or ``Draining``, as GWLB documents), ``job_ends`` and ``configuring_while_draining``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alibabacloud_alb20200616 import models as alb
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException

from alb_membership.alb.client import AlbClient
from alb_membership.alb.models import Server
from alb_membership.alb.retry import RetryPolicy
from tests.emulator import test_pipeline as pipelines
from tests.emulator.test_sdk_oracle import remove_request, sdk
from tests.support.alb import alb_client
from tests.support.emulator import (
    EmulatorProcess,
    default_config,
    server,
    start_emulator,
)

GROUP = "sgp-pipeline0000001"  # the pipeline helpers' group
DRAIN_STATUSES = ["Removing", "Draining"]
COMBINATIONS = [
    pytest.param(
        shows, job_ends, configuring, id=f"{shows.lower()}-{job_ends}-{'configuring' if configuring else 'available'}"
    )
    for shows in DRAIN_STATUSES
    for job_ends in ("before_draining", "after_draining")
    for configuring in (False, True)
]
KNOBS = ("drain_status", "job_ends", "configuring_while_draining")
DEFAULTS = {"drain_status": "Removing", "job_ends": "before_draining", "configuring_while_draining": False}


@pytest.fixture
def drain(emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The session's emulator; the draining knobs go back to their defaults afterwards."""
    yield emulator
    emulator.admin("PUT", "behaviour", DEFAULTS)


@pytest.fixture(params=DRAIN_STATUSES, ids=str.lower)
def shows(request: pytest.FixtureRequest, drain: EmulatorProcess) -> str:
    """What a draining server's Status shows (drain_status), set for the test."""
    drain.admin("PUT", "behaviour", {"drain_status": request.param})
    return str(request.param)


def make_group(emulator: EmulatorProcess, n: int = 3, **connection_drain: Any) -> None:
    body: dict[str, Any] = {"id": GROUP, "type": "Ip", "servers": [server(f"10.0.0.{i}") for i in range(1, n + 1)]}
    if connection_drain:
        body["connection_drain"] = connection_drain
    emulator.admin("POST", "server-groups", body)


def statuses(client: Client) -> dict[str, str]:
    body = client.list_server_group_servers(alb.ListServerGroupServersRequest(server_group_id=GROUP)).body
    return {s.server_id: s.status for s in body.servers}


def group_status(client: Client) -> str:
    groups = client.list_server_groups(alb.ListServerGroupsRequest(server_group_ids=[GROUP])).body.server_groups
    return str(groups[0].server_group_status)


def job(client: Client, job_id: str) -> alb.ListAsynJobsResponseBodyJobs:
    jobs = client.list_asyn_jobs(alb.ListAsynJobsRequest(job_ids=[job_id])).body.jobs
    assert len(jobs) == 1
    return jobs[0]


def draining(emulator: EmulatorProcess, server_id: str) -> bool:
    """Whether the server drains now, whatever its Status shows: the admin view's DrainingUntil says so."""
    return any(s["ServerId"] == server_id and "DrainingUntil" in s for s in emulator.group(GROUP)["Servers"])


def history(emulator: EmulatorProcess, server_id: str | None = None) -> list[dict[str, Any]]:
    return emulator.admin("GET", f"server-groups/{GROUP}/history" + (f"?server_id={server_id}" if server_id else ""))  # type: ignore[no-any-return]


def wait_for(check: Any, what: str, seconds: float = 5.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def remove(client: Client, *ids: str) -> str:
    return str(client.remove_servers_from_server_group(remove_request(*ids, group=GROUP)).body.job_id)


# -- ConnectionDrainConfig ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v2", [False, True], ids=["ACS3", "RPC-HMAC-SHA1"])
def test_list_server_groups_returns_connection_drain_config_in_the_sdks_names(drain: EmulatorProcess, v2: bool) -> None:
    drain.admin("POST", "server-groups", {"id": "sgp-plain00000001", "servers": []})
    make_group(drain, enabled=True, timeout_seconds=30)
    client = sdk(drain, v2=v2)
    groups = {
        g.server_group_id: g.connection_drain_config
        for g in client.list_server_groups(alb.ListServerGroupsRequest()).body.server_groups
    }
    assert isinstance(groups[GROUP], alb.ListServerGroupsResponseBodyServerGroupsConnectionDrainConfig)
    assert (groups[GROUP].connection_drain_enabled, groups[GROUP].connection_drain_timeout) == (True, 30)
    assert (
        groups["sgp-plain00000001"].connection_drain_enabled,
        groups["sgp-plain00000001"].connection_drain_timeout,
    ) == (
        False,
        300,
    )

    # The admin API changes it in place; a fractional test timeout shows as the API's integer, rounded up.
    view = drain.admin("PUT", f"server-groups/{GROUP}", {"connection_drain": {"timeout_seconds": 0.5}})
    assert view["connection_drain"] == {"enabled": True, "timeout_seconds": 0.5}
    assert len(view["Servers"]) == 3, "an update leaves the servers alone"
    config = client.list_server_groups(alb.ListServerGroupsRequest(server_group_ids=[GROUP])).body.server_groups[0]
    assert config.connection_drain_config.to_map() == {"ConnectionDrainEnabled": True, "ConnectionDrainTimeout": 1}


@pytest.mark.parametrize(
    "bad",
    [{"timeout_seconds": 901}, {"timeout_seconds": -1}, {"enabled": "yes"}, {"timeout_seconds": "30"}, {"draining": 1}],
)
def test_the_admin_api_refuses_a_bad_connection_drain(drain: EmulatorProcess, bad: dict[str, Any]) -> None:
    make_group(drain)
    for method, path, body in (
        ("PUT", f"server-groups/{GROUP}", {"connection_drain": bad}),
        ("POST", "server-groups", {"id": "sgp-bad000000001", "connection_drain": bad}),
    ):
        with pytest.raises(Exception, match="400"):
            drain.admin(method, path, body)
    assert drain.group(GROUP)["connection_drain"] == {"enabled": False, "timeout_seconds": 300.0}


def test_the_config_file_sets_connection_drain_and_the_knobs(tmp_path: Path) -> None:
    config = default_config()
    config["server_groups"] = [
        {"id": GROUP, "servers": [server("10.0.0.1")], "connection_drain": {"enabled": True, "timeout_seconds": 900}}
    ]
    knobs = {"job_ends": "after_draining", "configuring_while_draining": True, "drain_status": "Draining"}
    config["behaviour"] = {**config["behaviour"], **knobs}
    proc = start_emulator(tmp_path, config)
    try:
        cfg = sdk(proc).list_server_groups(alb.ListServerGroupsRequest()).body.server_groups[0].connection_drain_config
        assert (cfg.connection_drain_enabled, cfg.connection_drain_timeout) == (True, 900)
        behaviour = proc.admin("GET", "behaviour")
        assert {k: behaviour[k] for k in KNOBS} == knobs
    finally:
        proc.stop()
    for bad_knob in ({"job_ends": "whenever"}, {"drain_status": "Drained"}):
        bad = default_config()
        bad["behaviour"] = bad_knob
        with pytest.raises(RuntimeError, match=next(iter(bad_knob))):
            start_emulator(tmp_path, bad).stop()


def test_the_admin_api_sets_drain_status_and_refuses_others(drain: EmulatorProcess) -> None:
    assert drain.admin("GET", "behaviour")["drain_status"] == "Removing", "the default: the ALB SDK's enum"
    assert drain.admin("PUT", "behaviour", {"drain_status": "Draining"})["drain_status"] == "Draining"
    with pytest.raises(Exception, match="400"):
        drain.admin("PUT", "behaviour", {"drain_status": "draining"})
    assert drain.admin("GET", "behaviour")["drain_status"] == "Draining"


@pytest.mark.parametrize("shows", DRAIN_STATUSES, ids=str.lower)
def test_a_drain_survives_a_restart_with_a_state_file(tmp_path: Path, shows: str) -> None:
    state_file = tmp_path / "state.json"
    config = default_config()
    config["behaviour"] = {
        "job_seconds": 0.05,
        "job_ends": "after_draining",
        "configuring_while_draining": True,
        "drain_status": shows,
    }
    config["server_groups"] = [
        {"id": GROUP, "servers": [server("10.0.0.1")], "connection_drain": {"enabled": True, "timeout_seconds": 2}}
    ]
    first = start_emulator(tmp_path, config, "--state-file", str(state_file))
    try:
        job_id = remove(sdk(first), "10.0.0.1")
        wait_for(lambda: draining(first, "10.0.0.1"), "draining")
        assert statuses(sdk(first)) == {"10.0.0.1": shows}
    finally:
        first.stop()
    second = start_emulator(tmp_path, config, "--state-file", str(state_file))
    try:
        client = sdk(second)
        assert statuses(client) == {"10.0.0.1": shows} and draining(second, "10.0.0.1")
        assert (job(client, job_id).status, group_status(client)) == ("Processing", "Configuring")
        wait_for(lambda: not statuses(client), "the drain to end after the restart", seconds=5)
        assert (job(client, job_id).status, group_status(client)) == ("Succeeded", "Available")
        (record,) = second.admin("GET", f"server-groups/{GROUP}/history")
        assert record["gone_at"] - record["draining_at"] == pytest.approx(2.0, abs=1e-6)
    finally:
        second.stop()


# -- Removing -> Draining -> gone -----------------------------------------------------------------------------------


def test_a_removed_server_goes_removing_draining_gone_on_time(drain: EmulatorProcess, shows: str) -> None:
    """By default (drain_status Removing) the server shows Removing from the call until it is gone, as the ALB
    SDK's enum has it; with Draining (GWLB-like) it shows Draining from the job's end. It drains either way."""
    drain.admin("PUT", "behaviour", {"job_seconds": 0.2})
    make_group(drain, enabled=True, timeout_seconds=0.5)
    client = sdk(drain)
    job_id = remove(client, "10.0.0.1")
    seen: list[tuple[float, str]] = []
    through_sdk: set[str] = set()  # what the SDK shows while the admin view says it drains
    deadline = time.time() + 5
    while time.time() < deadline:
        # One snapshot (the admin view): the Status the API shows, and whether it drains.
        found = [x for x in drain.group(GROUP)["Servers"] if x["ServerId"] == "10.0.0.1"]
        state = "gone" if not found else f"{found[0]['Status']}{' (draining)' if 'DrainingUntil' in found[0] else ''}"
        if not seen or seen[-1][1] != state:
            seen.append((time.time(), state))
        if state == "gone":
            break
        if "draining" in state:
            through_sdk.add(statuses(client).get("10.0.0.1", "gone"))
        time.sleep(0.02)
    assert [s for _, s in seen] == ["Removing", f"{shows} (draining)", "gone"], seen
    assert shows in through_sdk and through_sdk <= {shows, "gone"}, through_sdk
    assert statuses(client) == {"10.0.0.2": "Available", "10.0.0.3": "Available"}

    (record,) = history(drain, "10.0.0.1")
    assert record["job_id"] == job_id and record["ended"] == "drain_timeout"
    assert record["draining_at"] - record["removing_at"] == pytest.approx(0.2, abs=0.01)
    assert record["gone_at"] - record["draining_at"] == pytest.approx(0.5, abs=1e-6)
    assert record["out_of_rotation_at"] == record["draining_at"]
    # Each change was observed no earlier than it happened, and not much later.
    assert record["draining_at"] <= seen[1][0] < record["draining_at"] + 0.5
    assert record["gone_at"] <= seen[2][0] < record["gone_at"] + 0.5
    assert job(client, job_id).status == "Succeeded"


def test_marking_a_draining_server_idle_ends_its_draining_at_once(drain: EmulatorProcess, shows: str) -> None:
    drain.admin("PUT", "behaviour", {"job_seconds": 0.1})
    make_group(drain, enabled=True, timeout_seconds=60)
    client = sdk(drain)
    remove(client, "10.0.0.1", "10.0.0.2")
    wait_for(lambda: draining(drain, "10.0.0.1"), "draining")
    assert drain.group(GROUP)["Servers"][0]["DrainingUntil"] > time.time() + 50

    before = time.time()
    answer = drain.admin("POST", f"server-groups/{GROUP}/idle", {"server_ids": ["10.0.0.1"]})
    assert answer == {"idle": ["10.0.0.1"], "drain_ended": ["10.0.0.1"]}
    assert statuses(client) == {"10.0.0.2": shows, "10.0.0.3": "Available"}
    (record,) = history(drain, "10.0.0.1")
    assert record["ended"] == "idle" and before <= record["gone_at"] <= time.time()
    assert history(drain, "10.0.0.2")[0]["gone_at"] is None

    # With no list, every server is idle: the one still draining goes, and one removed later never drains.
    assert drain.admin("POST", f"server-groups/{GROUP}/idle", {})["drain_ended"] == ["10.0.0.2"]
    remove(client, "10.0.0.3")
    wait_for(lambda: not statuses(client), "the idle server to leave at the job's end")
    (record,) = history(drain, "10.0.0.3")
    assert record["ended"] == "idle" and record["draining_at"] == record["gone_at"] == record["out_of_rotation_at"]


def test_a_zero_timeout_leaves_at_the_jobs_end(drain: EmulatorProcess) -> None:
    drain.admin(
        "PUT", "behaviour", {"job_seconds": 0.1, "job_ends": "after_draining", "configuring_while_draining": True}
    )
    make_group(drain, enabled=True, timeout_seconds=0)
    client = sdk(drain)
    job_id = remove(client, "10.0.0.1")
    wait_for(lambda: job(client, job_id).status == "Succeeded", "the job")
    assert "10.0.0.1" not in statuses(client) and group_status(client) == "Available"
    (record,) = history(drain)
    assert record["draining_at"] == record["gone_at"]


def test_a_draining_server_cannot_be_removed_again_but_can_be_added_back(drain: EmulatorProcess, shows: str) -> None:
    drain.admin("PUT", "behaviour", {"job_seconds": 0.1})
    make_group(drain, enabled=True, timeout_seconds=60)
    client = sdk(drain)
    remove(client, "10.0.0.1")
    wait_for(lambda: draining(drain, "10.0.0.1"), "draining")
    assert statuses(client)["10.0.0.1"] == shows
    with pytest.raises(ClientException) as refused:
        remove(client, "10.0.0.1", "10.0.0.2")
    assert refused.value.code == "ResourceNotFound.BackendServer"

    client.add_servers_to_server_group(
        alb.AddServersToServerGroupRequest(
            server_group_id=GROUP,
            servers=[alb.AddServersToServerGroupRequestServers(server_id="10.0.0.1", server_type="Ip", port=8080)],
        )
    )
    assert statuses(client)["10.0.0.1"] == "Adding"
    wait_for(lambda: statuses(client)["10.0.0.1"] == "Available", "the server back")
    (record,) = history(drain, "10.0.0.1")
    assert record["ended"] == "readded" and record["gone_at"] is None and record["out_of_rotation_at"]
    time.sleep(0.05)
    assert statuses(client)["10.0.0.1"] == "Available"


# -- the two UNCONFIRMED knobs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shows", "job_ends", "configuring"), COMBINATIONS)
def test_job_status_and_group_status_while_draining(
    drain: EmulatorProcess, shows: str, job_ends: str, configuring: bool
) -> None:
    knobs = {"drain_status": shows, "job_ends": job_ends, "configuring_while_draining": configuring}
    drain.admin("PUT", "behaviour", {"job_seconds": 0.2, **knobs})
    make_group(drain, enabled=True, timeout_seconds=1.0)
    client = sdk(drain)
    job_id = remove(client, "10.0.0.1")
    assert job(client, job_id).status == "Processing" and group_status(client) == "Configuring"
    wait_for(lambda: draining(drain, "10.0.0.1"), "draining", step=0.01)

    # While 10.0.0.1 drains (about a second):
    during = job(client, job_id)
    assert during.status == ("Succeeded" if job_ends == "before_draining" else "Processing")
    assert group_status(client) == ("Configuring" if configuring else "Available")
    if configuring:
        with pytest.raises(ClientException) as refused:
            remove(client, "10.0.0.2")
        assert refused.value.code == "IncorrectStatus.ServerGroup"
        assert refused.value.status_code == 400
        second = None
    else:
        second = remove(client, "10.0.0.2")
    assert statuses(client)["10.0.0.1"] == shows and draining(drain, "10.0.0.1"), "all this while it drained"

    wait_for(lambda: "10.0.0.1" not in statuses(client), "10.0.0.1 to leave", step=0.01)
    (record,) = history(drain, "10.0.0.1")
    done = job(client, job_id)
    assert done.status == "Succeeded"
    if job_ends == "after_draining":
        assert done.modify_time == int(record["gone_at"] * 1000)
    else:
        assert done.modify_time <= int(record["draining_at"] * 1000) + 200
    if second is None:
        second = remove(client, "10.0.0.2")  # the group takes changes again once nothing drains
    wait_for(lambda: job(client, second).status == "Succeeded", "the second removal")


@pytest.mark.parametrize("knobs", [{}, {"job_ends": "after_draining", "configuring_while_draining": True}])
def test_without_draining_nothing_changes(drain: EmulatorProcess, knobs: dict[str, Any]) -> None:
    drain.admin("PUT", "behaviour", {"job_seconds": 0.2, **knobs})
    make_group(drain, enabled=False, timeout_seconds=900)
    client = sdk(drain)
    job_id = remove(client, "10.0.0.1")
    seen = []
    while True:
        # The job and group are looked at before the servers: a server still listed afterwards means the job had
        # not ended when it was looked at.
        job_status, status, servers = job(client, job_id).status, group_status(client), statuses(client)
        if "10.0.0.1" not in servers:
            break
        seen.append(servers["10.0.0.1"])
        assert (job_status, status) == ("Processing", "Configuring")
        time.sleep(0.02)
    assert set(seen) == {"Removing"}
    assert job(client, job_id).status == "Succeeded" and group_status(client) == "Available"
    (record,) = history(drain)
    assert record["ended"] == "no_draining" and record["draining_at"] is None
    assert record["out_of_rotation_at"] == record["gone_at"] == pytest.approx(record["removing_at"] + 0.2, abs=0.01)


# -- the operator's removal pipeline under every combination --------------------------------------------------------


@pytest.fixture
def client(session: aiohttp.ClientSession, drain: EmulatorProcess) -> AlbClient:
    return alb_client(
        session, drain, retry=RetryPolicy(base_seconds=0.02, cap_seconds=0.1, total_seconds=10, max_attempts=200)
    )


@pytest.mark.parametrize(("shows", "job_ends", "configuring"), COMBINATIONS)
async def test_the_pipeline_removes_the_next_server_as_soon_as_the_cloud_allows(
    client: AlbClient, drain: EmulatorProcess, shows: str, job_ends: str, configuring: bool
) -> None:
    """Two removals one after the other on a group that drains for 1.5 s: both succeed, one call each, and the
    second goes out as soon as the cloud takes it (PRODUCT.md 3.10): at the first server's entry into Draining when
    the group stays Available, at its leaving when the group stays Configuring."""
    knobs = {"drain_status": shows, "job_ends": job_ends, "configuring_while_draining": configuring}
    drain.admin("PUT", "behaviour", {"job_seconds": 0.2, **knobs})
    make_group(drain, n=4, enabled=True, timeout_seconds=1.5)
    pipeline, directory, _ = pipelines.setup(client)
    pipelines.leaving(pipeline, Server("Ip", "10.0.0.1", 8080))
    await pipelines.until(lambda: len(pipelines.accepted(drain)) == 1, "the first call")
    pipeline.ledger.hold(("sgm-uid-1", "pod-second"), Server("Ip", "10.0.0.2", 8080), "pod")
    assert pipeline.ledger.leave(("sgm-uid-1", "pod-second"), "pod-terminating")
    pipeline.enqueue([Server("Ip", "10.0.0.2", 8080)])
    await pipelines.until(lambda: not pipeline.ledger.entries, "both removals to be done", seconds=15)
    await pipelines.until(lambda: history(drain, "10.0.0.2")[0]["ended"] is not None, "10.0.0.2 to leave", seconds=5)

    assert {s["ServerId"] for s in drain.group(GROUP)["Servers"]} == {"10.0.0.3", "10.0.0.4"}
    assert [r["servers"] for r in pipelines.accepted(drain)] == [["10.0.0.1"], ["10.0.0.2"]]
    assert [j.status for j in directory.state.jobs] == ["Succeeded", "Succeeded"]
    first, second = history(drain, "10.0.0.1")[0], history(drain, "10.0.0.2")[0]
    allowed = first["gone_at"] if configuring else first["draining_at"]
    assert second["removing_at"] >= allowed
    assert second["removing_at"] < allowed + 0.6, (
        f"the second removal went out {second['removing_at'] - allowed:.2f}s after the cloud would take it"
    )
    await pipeline.close()
