"""The command line: `timm-isomax <command>` / `python -m timm_isomax <command>` dispatch to thin command modules."""
import subprocess
import sys

import pytest

from timm_isomax.cli import COMMANDS, main

from .conftest import REPO


def test_usage_lists_every_command_and_unknown_ones_get_the_closest(capsys):
    assert main([]) == 2
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    assert main(["--help"]) == 0
    assert main(["finetun"]) == 2
    assert "unknown command 'finetun'; did you mean 'finetune'?" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help_with_its_own_name(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and f"usage: timm-isomax {command}" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_command_line():
    result = subprocess.run([sys.executable, "-m", "timm_isomax", "benchmark", "--report-only", "--output",
                             str(REPO / "no_such_results")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "no benchmark runs (seed*.json) under" in result.stderr


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    # `timm-isomax --help | head`: the reader may be gone before the usage is written
    for args in (["--help"], ["finetune", "--help"]):
        process = subprocess.Popen([sys.executable, "-m", "timm_isomax", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=REPO)
        process.stdout.close()  # the reader leaves before a byte is written
        stderr = process.stderr.read().decode()
        assert process.wait() in (0, 1) and "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-1500:]
