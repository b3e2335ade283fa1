"""The settings file (recorder/config.py): which QEMU records and whether
registers are recorded, checked through real recordings' meta.json."""

from __future__ import annotations

import shutil

import pytest

from .conftest import GUEST_ENV, qemu_under_test, read_meta, run_cannoli


def record_with_settings(tmp_path, program, text: str, *options):
    settings = tmp_path / "config.toml"
    settings.write_text(text)
    trace = tmp_path / "t.cannoli"
    proc = run_cannoli("record", "--no-index", "-o", trace, *options, program,
                       env={**GUEST_ENV, "CANNOLI_CONFIG": str(settings)})
    return proc, trace


def test_qemu_built_and_regs_settings_choose_the_recording(guest, tmp_path):
    program = guest("registers")
    proc, trace = record_with_settings(tmp_path, program, 'qemu = "built"\nregs = false\n')
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(trace)
    assert meta["qemu_version"].startswith("10.") and meta["plugin_api"] == 4
    assert meta["qemu_path"] == qemu_under_test("10").path()
    assert meta["record_regs"] is False and "--no-regs" in meta["regs_unavailable"]


def test_command_line_wins_over_the_settings_file(guest, tmp_path):
    proc, trace = record_with_settings(tmp_path, guest("registers"), 'qemu = "built"\n', "--qemu",
                                       qemu_under_test("7.2").path())
    assert proc.returncode == 0, proc.stderr
    assert read_meta(trace)["plugin_api"] == 1


@pytest.mark.parametrize("text, says", [('qmeu = "built"\n', "unknown setting 'qmeu'"),
                                        ("regs = 1\n", "regs must be a bool"),
                                        ("qemu = \n", "not valid TOML")])
def test_a_bad_settings_file_is_one_line_error(guest, tmp_path, text, says):
    proc, trace = record_with_settings(tmp_path, guest("registers"), text)
    assert proc.returncode == 1 and says in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not trace.exists()


def test_without_a_choice_the_built_qemu_records_and_the_summary_says_why(guest, tmp_path):
    proc, trace = record_with_settings(tmp_path, guest("registers"), "")
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(trace)
    assert meta["qemu_path"] == qemu_under_test("10").path() and meta["inline_records"] is True
    assert "the QEMU `cannoli setup-qemu` built" in meta["qemu_choice"]
    assert f"on QEMU {meta['qemu_version']} (records from its generated code; the default" in proc.stderr
    info = run_cannoli("info", trace)
    assert "cannoli setup-qemu` built" in info.stdout and "generated code" in info.stdout


@pytest.mark.parametrize("where", ["option", "settings"])
def test_qemu_system_is_the_one_on_path(guest, tmp_path, where):
    text, options = ('qemu = "system"\n', ()) if where == "settings" else ("", ("--qemu", "system"))
    proc, trace = record_with_settings(tmp_path, guest("registers"), text, *options)
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(trace)
    assert meta["qemu_path"] == shutil.which("qemu-x86_64") and meta["plugin_api"] == 1
    assert "records by callbacks" in proc.stderr
