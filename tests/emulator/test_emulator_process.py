"""The emulator as a service: restarts keep state, HTTPS works, bad configuration is refused clearly, the config file
sets the request-line limit, and the operator's own client's 200-server removal fits the default one."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from alb_membership.alb.models import Server
from localcluster.certs import write_pki
from tests.support.alb import alb_client
from tests.support.emulator import default_config, server, start_emulator


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    config = {**default_config(), "behaviour": {"job_seconds": 30}}
    first = start_emulator(tmp_path, config, "--state-file", str(state_file))
    try:
        first.add_group("sgp-persist0000001", [server("10.0.0.1"), server("10.0.0.2")])
        async with aiohttp.ClientSession() as session:
            client = alb_client(session, first)
            removal = await client.remove_servers("sgp-persist0000001", [Server("Ip", "10.0.0.1", 8080)], "tok-keep")
    finally:
        first.stop()
    assert json.loads(state_file.read_text())["jobs"]

    second = start_emulator(tmp_path, config, "--state-file", str(state_file))
    try:
        group = second.group("sgp-persist0000001")
        assert group["ServerGroupStatus"] == "Configuring"
        assert {s["ServerId"]: s["Status"] for s in group["Servers"]} == {
            "10.0.0.1": "Removing",
            "10.0.0.2": "Available",
        }
        async with aiohttp.ClientSession() as session:
            client = alb_client(session, second)
            again = await client.remove_servers("sgp-persist0000001", [Server("Ip", "10.0.0.1", 8080)], "tok-keep")
            jobs = await client.list_asyn_jobs([removal.job_id or ""])
        assert again.job_id == removal.job_id, "a token used before the restart still answers with its job"
        (token,) = second.admin("GET", "tokens")
        assert (token["token"], token["job_id"], token["mismatched"]) == ("tok-keep", removal.job_id, [])
        assert jobs[removal.job_id or ""].status == "Processing"
    finally:
        second.stop()


async def test_https_with_a_given_certificate(tmp_path: Path) -> None:
    write_pki(tmp_path / "pki")
    emulator = start_emulator(
        tmp_path, None, "--tls-cert", str(tmp_path / "pki/server.crt"), "--tls-key", str(tmp_path / "pki/server.key")
    )
    try:
        assert emulator.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(tmp_path / "pki/ca.crt"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session:
            client = alb_client(session, emulator)
            assert await client.list_server_groups() == []
    finally:
        emulator.stop()


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"nonsense": 1}, "unknown configuration key(s): nonsense"),
        ({"behaviour": {"max_servers_per_call": 500}}, "max_servers_per_call must be between 1 and 200"),
        ({"behaviour": {"jobseconds": 1}}, "unknown behaviour setting(s): jobseconds"),
        ({"behaviour": {"drain_status": "Draining2"}}, "drain_status must be one of Removing, Draining"),
        ({"behaviour": {"max_request_line": 0}}, "max_request_line must be a whole number of bytes"),
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, config: dict[str, object], complaint: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "alb_emulator", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert complaint in proc.stderr


def test_admin_api_refuses_bad_faults(emulator_process) -> None:  # type: ignore[no-untyped-def]
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        emulator_process.admin("PUT", "faults", {"script": [{"kind": "explode"}]})
    assert refused.value.code == 400
    assert "fault kind must be one of" in refused.value.read().decode()


async def test_the_config_file_sets_the_request_line_limit_and_200_servers_fit_by_default(tmp_path: Path) -> None:
    ips = [f"fd00:1234:5678:9abc:def0:1234:5678:{i:04x}" for i in range(200)]  # IPv6: the longest Ip servers
    servers = [Server("Ip", ip, 65535) for ip in ips]
    config = default_config()
    config["behaviour"] = {"job_seconds": 0.1, "max_servers_per_call": 200}
    config["server_groups"] = [{"id": "sgp-wide0000000001", "servers": [server(ip, 65535) for ip in ips]}]
    emulator = start_emulator(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as session:
            removal = await alb_client(session, emulator).remove_servers("sgp-wide0000000001", servers, "t" * 64)
        assert removal.job_id, "the operator's client sends what the SDK sends: it fits"
    finally:
        emulator.stop()
    config["behaviour"] = {"max_request_line": 4096, "drain_status": "Draining"}
    emulator = start_emulator(tmp_path, config)
    try:
        behaviour = emulator.admin("GET", "behaviour")
        assert (behaviour["max_request_line"], behaviour["drain_status"]) == (4096, "Draining")
        async with aiohttp.ClientSession() as session:
            url = f"{emulator.url}/?{'a' * 4096}"
            async with session.post(url) as refused:
                assert refused.status == 400 and refused.content_type == "text/plain"
                assert (await refused.text()).startswith("Got more than 4096 bytes when reading: bytearray(b'/?aaa")
    finally:
        emulator.stop()
