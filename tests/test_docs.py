"""The README's quick start is what CI runs, and the code is lint- and type-clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick_start)


def test_the_quick_start_is_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    _, test_command = readme_commands()
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert test_command in ci


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "src", "tests", "migrations", "benchmarks"],
        ["ruff", "format", "--check", "src", "tests", "migrations", "benchmarks"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_code_is_lint_and_type_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
