"""Every vosedge command answers -h as it answers --help (issue 31: vos-segment and vos-eval did not)."""

import importlib
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

SCRIPTS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_is_covered():
    assert {"vos-train", "vos-export", "vos-segment", "vos-eval", "vos-bench", "vos-grid"} <= set(SCRIPTS)


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_dash_h_is_help(command):
    module, _, name = SCRIPTS[command].partition(":")
    main = getattr(importlib.import_module(module), name)
    short, long = (CliRunner().invoke(main, [flag], prog_name=command) for flag in ("-h", "--help"))
    assert short.exit_code == 0 and long.exit_code == 0, short.output
    assert short.output == long.output and short.output.startswith(f"Usage: {command} ")
    assert "-h, --help" in short.output
