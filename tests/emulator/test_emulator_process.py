"""The emulator as a service: restarts keep state, HTTPS works, bad configuration is refused clearly."""

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
