import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
