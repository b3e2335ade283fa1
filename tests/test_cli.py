"""The CLI's shape: every command has a one-line summary and an Example."""

from __future__ import annotations

import click
import pytest

from cannoli_db.cli import cli

from .conftest import run_cannoli

COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_summary_and_example(name):
    command = cli.commands[name]
    assert command.get_short_help_str(limit=200).strip(), name
    assert "Example:" in (command.help or ""), name


def test_group_has_example():
    assert "Example:" in cli.help


@pytest.mark.parametrize("name", COMMANDS)
def test_help_runs(name):
    proc = run_cannoli(name, "--help")
    assert proc.returncode == 0
    assert "Example:" in proc.stdout


def test_info_on_missing_trace_is_one_line(tmp_path):
    proc = run_cannoli("info", tmp_path / "nothing.cannoli")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no such trace directory" in proc.stderr


def test_commands_are_click_commands():
    assert all(isinstance(c, click.Command) for c in cli.commands.values())
