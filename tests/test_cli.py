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


def every_command(group=cli, path=()):
    """(path, command) of every command and subcommand, e.g. (("export", "tenet"), <Command>)."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from every_command(command, (*path, name))


@pytest.mark.parametrize("path", [p for p, _ in every_command() if len(p) > 1], ids=" ".join)
def test_subcommand_help_has_an_example(path):
    proc = run_cannoli(*path, "--help")
    assert proc.returncode == 0 and "Example:" in proc.stdout, proc.stdout


SHARED = ("table", "csv", "json", "jsonl")  # the formats every data command takes, written out here


def format_choices():
    return {path: tuple(p.type.choices) for path, command in every_command() for p in command.params
            if "--format" in getattr(p, "opts", ())}


def test_format_offers_the_shared_choices_on_every_command_after_its_own_text_view():
    choices = format_choices()
    data_commands = {("info",), ("sql",), ("query",), ("who-wrote",), ("stack",), ("replay",), ("memory",),
                     ("check-registers",)}
    assert data_commands <= set(choices)
    for path, offered in choices.items():
        assert offered[len(offered) - len(SHARED):] == SHARED, path
        assert set(offered) - set(SHARED) <= {"text", "hexdump"}, path  # a command's own text view, nothing else
    assert choices[("replay",)] == ("text", *SHARED) and choices[("memory",)] == ("hexdump", *SHARED)
    # export's kinds are subcommands, not formats
    assert not [p for p in choices if p[0] == "export"]
    assert sorted(cli.commands["export"].commands) == ["drcov", "parquet", "tenet"]


@pytest.mark.parametrize("path", sorted(format_choices()), ids=" ".join)
def test_an_unknown_format_is_refused_naming_the_choices(path):
    proc = run_cannoli(*path, "TRACE", "--format", "yaml")
    assert proc.returncode == 2 and "'yaml' is not one of" in proc.stderr and "'jsonl'" in proc.stderr
    assert "Traceback" not in proc.stderr
