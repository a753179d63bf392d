"""Every subcommand answers --help (and so imports cleanly)."""

import pytest
from click.testing import CliRunner

from cellrep_ml.cli import _COMMANDS, main


def test_top_level_help_lists_commands():
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0, out.output
    for name in _COMMANDS:
        assert name in out.output


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_subcommand_help(name):
    out = CliRunner().invoke(main, [name, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage:" in out.output
    cmd = main.get_command(None, name)
    for sub in getattr(cmd, "commands", {}):
        sub_out = CliRunner().invoke(main, [name, sub, "--help"])
        assert sub_out.exit_code == 0, sub_out.output
