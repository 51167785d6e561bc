"""The README's set-up commands and .ci/run: CI runs exactly the README's test command, and
both commands start from a fresh venv, so that nothing installed on a machine beforehand
can hide a missing install step."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text[text.index("## Set-up: two commands"):text.index("## What is supported")]
    return re.findall(r"```bash\n(.+?)\n```", setup, re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    main_job, test_command = _readme_commands()
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1] == test_command
    assert "pytest" in test_command and "rnnkernels.bench" in main_job


def test_commands_start_from_a_fresh_venv():
    for command in _readme_commands():
        assert command.startswith("python3 -m venv --clear .venv && . .venv/bin/activate && ")
        assert "pip install torch==2.13.0 " in command  # never an unpinned torch
    assert "/.venv/" in (ROOT / ".gitignore").read_text().splitlines()
