import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from alb_membership import __version__
from alb_membership.cli import main


def test_console_script_prints_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "alb_membership", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: alb-membership-operator" in out


def test_version(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert __version__ in capsys.readouterr().out


def test_the_package_the_chart_and_its_image_tag_are_released_in_step() -> None:
    """One version: the package's, the chart's version and appVersion (the image tag it deploys by default), and
    the newest release the CHANGELOG names."""
    top = Path(__file__).resolve().parents[2]
    package = tomllib.loads((top / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((top / "deploy/helm/alb-membership-operator/Chart.yaml").read_text())
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (top / "CHANGELOG.md").read_text(), re.M)
    assert package == __version__ == chart["version"] == chart["appVersion"] == released[0]


def test_run_without_a_region_or_an_endpoint_is_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    assert exit_.value.code == 2 and "--region" in capsys.readouterr().err


def test_a_deletion_waiting_on_the_cloud_is_looked_at_less_and_less_often() -> None:
    from alb_membership.handlers import deletion_recheck

    assert [deletion_recheck(r) for r in range(7)] == [1, 2, 4, 8, 15, 15, 15]
