import subprocess
import sys

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
