"""Cooldowns and adaptive limits on the command line: ``run --cooldown-on-exit``, and how
``status``, ``explain`` and ``watch`` show what the limiter learned.

Every command runs as a real process, on SQLite and on PostgreSQL (the ``database`` fixture).
The cooldowns are long (minutes) so that none ends during a test, and a run that could wait on
a cooling model carries ``--timeout 0``: it tries once instead of hanging. What was stored is
read back with the database's own driver.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter.cli._run import parse_cooldown_on_exit

from .cli_helpers import CONFIG, holding, lease_holders, query, run_cli

if TYPE_CHECKING:
    from pathlib import Path

ENV_SCRIPT = (
    "import os; print(*(os.environ.get('COLLET_LIMITER_' + n) "
    "for n in ('PROVIDER', 'MODEL', 'KEY', 'VIA', 'PRIMARY')))"
)
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
# What the limiter learned, as stored: all NULL for a model nothing was reported on.
LEARNED = (
    "SELECT provider, model, effective_limit, limited_ts, cooldown_until_ts, cooldown_kind,"
    " cooldown_reason FROM models ORDER BY provider, model"
)


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they want to be (rich folds cells to fit 80 columns otherwise)."""
    monkeypatch.setenv("COLUMNS", "200")


def write_config(tmp_path: Path, text: str = CONFIG, *, limiter: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text + (f"\n[limiter]\n{limiter}\n" if limiter else ""))
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def run_args(database: Path | str, config: Path, *args: str) -> list[str]:
    return ["--db", str(database), "--config", str(config), "run", *args]


def models_json(database: Path | str) -> dict[str, dict[str, Any]]:
    """``status --json``'s models by key."""
    result = run_cli("--db", str(database), "status", "--json")
    assert result.returncode == 0, result.stderr
    return {model["key"]: model for model in json.loads(result.stdout)["models"]}


def nothing_learned(database: Path | str) -> bool:
    return all(row[2:] == (None,) * 5 for row in query(database, LEARNED))


# --- run --cooldown-on-exit -----------------------------------------------------------------------


def test_a_listed_exit_status_cools_the_model_down_for_every_process(
    database: Path | str, config: Path
) -> None:
    """status says so, explain says so, and the next run on that model takes its fallback."""
    result = run_cli(
        *run_args(
            database, config, "-m", "zai/glm-5", "--cooldown-on-exit", "75:600",
            "--", "sh", "-c", "exit 75",
        )
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (75, "")
    assert (
        "collet-limiter: warning: zai/glm-5: exit code (command exited with 75); "
        "cooling down for 10 min" in result.stderr
    )
    assert lease_holders(database) == []  # released after the report
    assert query(
        database, "SELECT cooldown_kind, cooldown_reason FROM models WHERE model = 'glm-5'"
    ) == [("exit_code", "command exited with 75")]

    models = models_json(database)
    glm5 = models["zai/glm-5"]
    assert (glm5["limit"], glm5["effective_limit"], glm5["in_use"]) == (1, 1, 0)
    assert (glm5["cooldown_kind"], glm5["cooldown_reason"]) == (
        "exit_code",
        "command exited with 75",
    )
    assert re.fullmatch(ISO, glm5["cooldown_until"])
    assert 500 < glm5["cooldown_left_secs"] <= 600
    glm47 = models["zai/glm-4.7"]
    assert (glm47["cooldown_until"], glm47["cooldown_kind"], glm47["cooldown_reason"]) == (
        None,
        None,
        None,
    )
    assert (glm47["cooldown_left_secs"], glm47["effective_limit"]) == (0, 2)

    explained = run_cli("--db", str(database), "explain", "zai/glm-5", "--fallback", "zai/glm-4.7")
    assert re.search(
        r"1\s+zai/glm-5\s+primary\s+yes\s+no\s+"
        r"cooling down \(exit code: command exited with 75; \d+m left\)",
        explained.stdout,
    ), explained.stdout
    assert "would fall back to zai/glm-4.7 via chain" in explained.stdout
    data = json.loads(
        run_cli(
            "--db", str(database), "explain", "zai/glm-5", "--fallback", "zai/glm-4.7", "--json"
        ).stdout
    )
    assert data["choice"] == {"key": "zai/glm-4.7", "via": "chain"}
    assert data["candidates"][0]["has_room"] is False
    assert data["candidates"][0]["reason"].startswith(
        "cooling down (exit code: command exited with 75; "
    )

    # glm-5 is free (no lease), yet the next run goes to the fallback while it cools down.
    second = run_cli(
        *run_args(
            database, config, "-m", "zai/glm-5", "--fallback", "zai/glm-4.7", "--timeout", "0",
            "--", "python3", "-c", ENV_SCRIPT,
        )
    )  # fmt: skip
    assert second.stdout.split() == ["zai", "glm-4.7", "zai/glm-4.7", "chain", "zai/glm-5"], (
        second.stderr
    )


def test_without_secs_the_cooldown_lasts_the_configs_cooldown_secs(
    database: Path | str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, limiter="cooldown_secs = 900")
    result = run_cli(
        *run_args(
            database, config, "-m", "zai/glm-4.7", "--cooldown-on-exit", "3",
            "--cooldown-on-exit", "75:60", "--", "sh", "-c", "exit 3",
        )
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    glm47 = models_json(database)["zai/glm-4.7"]
    assert glm47["cooldown_reason"] == "command exited with 3"
    assert 800 < glm47["cooldown_left_secs"] <= 900


def test_a_command_killed_by_a_listed_signal_status_is_reported_by_its_signal(
    database: Path | str, config: Path
) -> None:
    result = run_cli(
        *run_args(
            database, config, "-m", "zai/glm-5", "--cooldown-on-exit", "137:600",
            "--", "sh", "-c", "kill -KILL $$",
        )
    )  # fmt: skip
    assert result.returncode == 137
    glm5 = models_json(database)["zai/glm-5"]
    assert (glm5["cooldown_kind"], glm5["cooldown_reason"]) == (
        "exit_code",
        "command died of SIGKILL, status 137",
    )


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["sh", "-c", "exit 4"], 4),  # another status than the ones listed
        (["sh", "-c", "exit 0"], 0),
        (["no-such-command-xyz"], 127),  # run's own 127: the command never ran
    ],
    ids=["other-status", "success", "not-started"],
)
def test_an_exit_status_not_listed_reports_nothing(
    database: Path | str, config: Path, command: list[str], status: int
) -> None:
    result = run_cli(
        *run_args(
            database, config, "-m", "zai/glm-5", "--cooldown-on-exit", "75:600",
            "--cooldown-on-exit", "3", "--cooldown-on-exit", "127", "--", *command,
        )
    )  # fmt: skip
    assert result.returncode == status
    assert "cooling" not in result.stderr
    assert lease_holders(database) == []
    assert nothing_learned(database)
    assert all(
        (model["cooldown_until"], model["cooldown_left_secs"]) == (None, 0)
        and model["effective_limit"] == model["limit"]
        for model in models_json(database).values()
    )


BAD_VALUES = [
    ("75:abc", "'75:abc': SECS 'abc' is not a number of seconds; write CODE or CODE:SECS"),
    ("abc", "'abc': CODE 'abc' is not an exit status; write CODE or CODE:SECS, e.g. 75 or 75:30"),
    ("0", "'0': CODE 0 is success, not a refusal; give a status from 1 to 255"),
    ("256", "'256': CODE must be an exit status from 1 to 255"),
    ("75:0", "'75:0': SECS must be more than 0 and at most 86400 (a day)"),
    ("75:-5", "'75:-5': SECS must be more than 0"),
    ("75:nan", "'75:nan': SECS must be more than 0"),
    ("75:100000", "'75:100000': SECS must be more than 0 and at most 86400 (a day)"),
    ("75:", "'75:': SECS is missing after ':'"),
    (":30", "':30': CODE is missing"),
    ("75,76", "'75,76': one CODE[:SECS] per option; repeat --cooldown-on-exit for more"),
]


@pytest.mark.parametrize(("value", "says"), BAD_VALUES, ids=[value for value, _ in BAD_VALUES])
def test_a_bad_cooldown_on_exit_value_is_refused_saying_what_is_wrong(
    value: str, says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_cooldown_on_exit(["3:10", value])


@pytest.mark.parametrize(("value", "says"), [BAD_VALUES[0], BAD_VALUES[2]], ids=["secs", "code"])
def test_a_bad_cooldown_on_exit_is_a_one_line_usage_error_and_changes_nothing(
    database: Path | str, config: Path, tmp_path: Path, value: str, says: str
) -> None:
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    stored = "SELECT * FROM {} ORDER BY 1, 2"
    before = [query(database, stored.format(table)) for table in ("models", "meta", "leases")]
    # Another config, which the run would write to the database if it got as far as opening it.
    other = tmp_path / "other" / "config.toml"
    other.parent.mkdir()
    other.write_text(CONFIG.replace("concurrency_limit = 1", "concurrency_limit = 4"))
    marker = tmp_path / "ran"
    result = run_cli(
        *run_args(
            database, other, "-m", "zai/glm-5", "--cooldown-on-exit", value,
            "--", "touch", str(marker),
        )
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(
        f"collet-limiter: Invalid value for '--cooldown-on-exit': {says}"
    )
    assert result.stderr.endswith(" (see 'collet-limiter run --help')\n")
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert not marker.exists()
    assert [query(database, stored.format(table)) for table in ("models", "meta", "leases")] == (
        before
    )


def test_the_same_code_twice_is_a_usage_error(config: Path, tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    result = run_cli(
        *run_args(
            db, config, "-m", "zai/glm-5", "--cooldown-on-exit", "75",
            "--cooldown-on-exit", "75:10", "--", "true",
        )
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "collet-limiter: Invalid value for '--cooldown-on-exit': '75:10': exit status 75 is "
        "given twice; give each once (see 'collet-limiter run --help')\n"
    )
    assert not db.exists()


@pytest.mark.parametrize(
    ("values", "parsed"),
    [
        ((), {}),
        (("75",), {75: None}),
        (("75:30",), {75: 30.0}),
        ((" 3 : 1.5 ", "137:86400"), {3: 1.5, 137: 86400.0}),
        (("255:0.25",), {255: 0.25}),
    ],
)
def test_cooldown_on_exit_values_parse_to_statuses_and_seconds(
    values: tuple[str, ...], parsed: dict[int, float | None]
) -> None:
    assert parse_cooldown_on_exit(values) == parsed


# --- status, watch and explain show what was learned ----------------------------------------------


def test_the_status_table_grows_a_cooldown_column_only_while_a_model_cools_down(
    database: Path | str, config: Path
) -> None:
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    calm = run_cli("--db", str(database), "status").stdout
    assert "cooldown" not in calm and "cooling" not in calm
    header = next(line for line in calm.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "in", "use", "limit", "waiting", "tier", "tools", "kind"]

    assert (
        run_cli(
            *run_args(
                database, config, "-m", "zai/glm-5", "--cooldown-on-exit", "75:600",
                "--", "sh", "-c", "exit 75",
            )
        ).returncode
        == 75
    )  # fmt: skip
    text = run_cli("--db", str(database), "status").stdout
    assert "global cap 0/3 in use, 0 waiting, 1 cooling down" in text
    assert re.search(
        r"zai/glm-5\s+0\s+1\s+0\s+premium\s+yes\s+api\s+"
        r"\d+m\d\ds \(exit code: command exited with 75\)\n",
        text,
    ), text
    assert re.search(r"zai/glm-4.7\s+0\s+2\s+0\s+standard\s+yes\s+api\s*\n", text), text

    line = run_cli("--db", str(database), "watch", "--count", "1").stdout
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d  zai/glm-5 0/1 \(cooling down \d+m\d\ds, exit code: command exited "
        r"with 75\)  zai/glm-4.7 0/2  claude/sonnet 0/1  global 0/3  waiting 0\n",
        line,
    ), line


def test_an_adaptive_limit_lowered_by_a_report_shows_next_to_the_configured_one(
    database: Path | str, tmp_path: Path
) -> None:
    """glm-4.7 (limit 3) held by two runs when a third reports: its limit drops to 2 of 3."""
    config = write_config(
        tmp_path,
        CONFIG.replace("concurrency_limit = 2", "concurrency_limit = 3"),
        limiter="adaptive = true\nadaptive_recover_secs = 3600",
    )
    with (
        holding(database, "zai/glm-4.7", config=config, holder="one"),
        holding(database, "zai/glm-4.7", config=config, holder="two"),
    ):
        reported = run_cli(
            *run_args(
                database, config, "-m", "zai/glm-4.7", "--cooldown-on-exit", "75:600",
                "--", "sh", "-c", "exit 75",
            )
        )  # fmt: skip
        assert reported.returncode == 75, reported.stderr
        assert "zai/glm-4.7: adaptive limit lowered to 2 of the configured 3" in reported.stderr
        text = run_cli("--db", str(database), "status").stdout
        glm47 = models_json(database)["zai/glm-4.7"]
        line = run_cli("--db", str(database), "watch", "--count", "1").stdout
    assert re.search(
        r"zai/glm-4.7\s+2\s+2 \(of 3\)\s+0\s+standard\s+yes\s+api\s+"
        r"\d+m\d\ds \(exit code: command exited with 75\)\n",
        text,
    ), text
    assert (glm47["limit"], glm47["effective_limit"], glm47["in_use"]) == (3, 2, 2)
    assert "zai/glm-4.7 2/2 (of 3) (cooling down " in line
    assert query(database, "SELECT effective_limit FROM models WHERE model = 'glm-4.7'") == [(2,)]
