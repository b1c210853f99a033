"""The ALB emulator as a real process on a free loopback port, with a small client for its admin API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.cluster import die_with_parent

ACCESS_KEY_ID = "LTAItestkey000001"
ACCESS_KEY_SECRET = "test-secret-0000000000000001"
STS_KEY_ID = "STS.testkey000002"
STS_SECRET = "sts-secret-000000000002"
STS_TOKEN = "CAIS-security-token-000002"


def default_config() -> dict[str, Any]:
    return {
        "credentials": [
            {"access_key_id": ACCESS_KEY_ID, "access_key_secret": ACCESS_KEY_SECRET},
            {"access_key_id": STS_KEY_ID, "access_key_secret": STS_SECRET, "security_token": STS_TOKEN},
        ],
        "behaviour": {"job_seconds": 0.3},
    }


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[str]
    url: str

    @property
    def endpoint(self) -> str:
        """host:port, the form the official SDK's Config.endpoint wants."""
        return self.url.split("://", 1)[1]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/_emulator/{path}", data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def add_group(self, group_id: str, servers: list[dict[str, Any]], type_: str = "Ip", **extra: Any) -> None:
        """``extra``: more of the group, e.g. connection_drain={"enabled": True, "timeout_seconds": 30}."""
        self.admin("POST", "server-groups", {"id": group_id, "type": type_, "servers": servers, **extra})

    def group(self, group_id: str) -> dict[str, Any]:
        return self.admin("GET", f"server-groups/{group_id}")  # type: ignore[no-any-return]

    def requests(self, action: str | None = None) -> list[dict[str, Any]]:
        return self.admin("GET", "requests" + (f"?action={action}" if action else ""))  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_emulator(
    config_dir: Path, config: dict[str, Any] | None = None, *extra: str, port: int = 0
) -> EmulatorProcess:
    config_file = config_dir / "emulator.json"
    config_file.write_text(json.dumps(config or default_config()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "alb_emulator", "--listen", f"127.0.0.1:{port}", "--config", str(config_file), *extra],
        stdout=subprocess.PIPE,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - nothing may outlive the test run, even a killed one
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return EmulatorProcess(process=proc, url=line.split("listening on ", 1)[1].split()[0])


def server(server_id: str, port: int = 8080, server_type: str = "Ip", **extra: Any) -> dict[str, Any]:
    return {"server_id": server_id, "server_type": server_type, "port": port, **extra}
