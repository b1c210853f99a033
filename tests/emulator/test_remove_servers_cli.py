"""The runbook command, ``alb-membership-operator remove-servers``, against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.support.emulator import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    STS_KEY_ID,
    STS_SECRET,
    STS_TOKEN,
    EmulatorProcess,
    server,
)

GROUP = "sgp-cli0000000001"


def cli(emulator: EmulatorProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    base["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"  # never look for an instance role here
    creds = (
        env
        if env is not None
        else {"ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET}
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "alb_membership",
            "remove-servers",
            "--endpoint",
            emulator.url,
            "--server-group-id",
            GROUP,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **creds},
        check=False,
    )


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_removes_and_waits(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1"), server("10.0.0.2")])
    proc = cli(emulator, "--server", "Ip:10.0.0.1:8080", "--wait")
    assert proc.returncode == 0, proc.stderr
    [line] = lines(proc.stdout)
    assert line["Outcome"] == "accepted" and line["JobId"] and line["RequestId"] and line["JobStatus"] == "Succeeded"
    assert [s["ServerId"] for s in emulator.group(GROUP)["Servers"]] == ["10.0.0.2"]
    assert ACCESS_KEY_SECRET not in proc.stdout + proc.stderr


def test_given_token_makes_a_rerun_harmless(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    first = lines(cli(emulator, "--server", "Ip:10.0.0.1:8080", "--client-token", "runbook-42").stdout)[0]
    second = lines(cli(emulator, "--server", "Ip:10.0.0.1:8080", "--client-token", "runbook-42").stdout)[0]
    assert first["JobId"] == second["JobId"] and first["ClientToken"] == "runbook-42"
    assert len(emulator.admin("GET", "jobs")) == 1


def test_many_servers_go_out_in_batches(emulator: EmulatorProcess) -> None:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0})
    emulator.add_group(GROUP, [server(f"10.1.0.{i}") for i in range(50)])
    proc = cli(emulator, *[a for i in range(50) for a in ("--server", f"Ip:10.1.0.{i}:8080")])
    assert proc.returncode == 0, proc.stderr
    assert [len(line["Servers"]) for line in lines(proc.stdout)] == [40, 10]
    assert emulator.group(GROUP)["Servers"] == []


def test_dry_run(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    [line] = lines(cli(emulator, "--server", "Ip:10.0.0.1:8080", "--dry-run").stdout)
    assert line["Outcome"] == "dry_run_passed" and line["JobId"] is None
    assert len(emulator.group(GROUP)["Servers"]) == 1


def test_sts_credentials_from_the_environment(emulator: EmulatorProcess) -> None:
    emulator.add_group(GROUP, [server("10.0.0.1")])
    proc = cli(
        emulator,
        "--server",
        "Ip:10.0.0.1:8080",
        env={
            "ALIBABA_CLOUD_ACCESS_KEY_ID": STS_KEY_ID,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": STS_SECRET,
            "ALIBABA_CLOUD_SECURITY_TOKEN": STS_TOKEN,
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert emulator.requests("RemoveServersFromServerGroup")[-1]["access_key_id"] == STS_KEY_ID


def test_cloud_error_is_one_line_with_code_and_request_id(emulator: EmulatorProcess) -> None:
    proc = cli(emulator, "--server", "Ip:10.0.0.1:8080")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ResourceNotFound.ServerGroup:") and "RequestId" in line and "HTTP 404" in line


def test_missing_credentials_are_reported_without_secrets(emulator: EmulatorProcess) -> None:
    proc = cli(
        emulator,
        "--server",
        "Ip:10.0.0.1:8080",
        env={"ALIBABA_CLOUD_CLI_PROFILE_DISABLED": "true", "ALIBABA_CLOUD_CREDENTIALS_FILE": "/nonexistent"},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: CredentialsUnavailable: no usable Alibaba Cloud credentials")


def test_bad_server_spec_is_a_usage_error(emulator: EmulatorProcess) -> None:
    proc = cli(emulator, "--server", "Ip:10.0.0.1")
    assert proc.returncode == 2
    assert "TYPE:ID:PORT" in proc.stderr
