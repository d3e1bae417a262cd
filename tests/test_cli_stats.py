"""``collet-limiter stats``: the history's figures per model over a window, as a table or JSON.

A known workload is made through the API (a holder that dies, releases, a chain fallback, a
reported 429, a timeout, a queued grant) and the command, run as a real process, must give its
exact figures; the waits of grants that did not queue are exactly 0 (requested and granted in
one transaction). ``--since`` and ``--model`` cut it; before anything has run it shows zeros and
creates nothing. On SQLite and PostgreSQL; the text and the parsing of ``--since`` once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import AcquireTimeout, Limiter, load_config
from collet_limiter._engine import resolve_target
from collet_limiter._stats import ModelStats, Stats
from collet_limiter.cli._stats import parse_since, window_line

from .cli_helpers import (
    CONFIG,
    ROOT,
    TIMEOUT,
    leave_a_dead_holder,
    run_cli,
    wait_until,
    waiter_count,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

VIAS = ("primary", "queue", "chain", "capability", "cli")
FIELDS = {
    "key",
    "provider",
    "model",
    "acquisitions",
    "by_via",
    "wait_p50_ms",
    "wait_p95_ms",
    "wait_p99_ms",
    "wait_max_ms",
    "queued",
    "timeouts",
    "cancellations",
    "reclaims",
    "lost",
    "rate_limited",
    "cooling_secs",
    "peak_holders",
}
# How long local/solo's holder keeps its waiter waiting: the waiter's wait is at least this. Real
# time, but only a lower bound is asserted, so no length makes the test flaky.
HOLD_SECS = 0.2
# Around the moment that splits the workload for --since: the events before it and after it are
# that far from it, so that the host's clock and the database's (the server's on PostgreSQL, on
# this same host) put every event on its side even if they round differently.
MARGIN_SECS = 0.02


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they want to be, so that rows compare whole."""
    monkeypatch.setenv("COLUMNS", "200")


def stats(database: Path | str, config: Path, *args: str) -> str:
    """``collet-limiter stats ARGS``'s stdout (it must succeed silently)."""
    result = run_cli("--db", str(database), "--config", str(config), "stats", *args)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def figures(
    key: str | None, acquisitions: int = 0, waits: tuple[float, ...] | None = None, **counts: Any
) -> dict[str, Any]:
    """A model's (or, ``key`` None, the total's) ``--json`` object: ``waits`` are p50, p95,
    p99, max (None: nothing acquired); ``counts`` the other figures and ``via_NAME``s, 0 unless
    given."""
    provider, _, name = key.partition("/") if key else (None, None, None)
    p50, p95, p99, most = waits or (None, None, None, None)
    data: dict[str, Any] = {
        "key": key,
        "provider": provider,
        "model": name,
        "acquisitions": acquisitions,
        "by_via": {via: counts.pop(f"via_{via}", 0) for via in VIAS},
        "wait_p50_ms": p50,
        "wait_p95_ms": p95,
        "wait_p99_ms": p99,
        "wait_max_ms": most,
    }
    for field in sorted(FIELDS - set(data)):
        data[field] = counts.pop(field, 0)
    assert not counts, counts
    return data


def documented_fields() -> set[str]:
    """The JSON field names docs/cli.md's stats section lists (backquoted first cells)."""
    guide = (ROOT / "docs/cli.md").read_text()
    section = guide.split("## `collet-limiter stats`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))


# --- a known workload ------------------------------------------------------------------------


def test_stats_gives_the_exact_figures_of_a_known_workload_and_since_and_model_cut_it(
    database: Path | str, config: Path
) -> None:
    """zai/glm-5 (limit 1): a process takes it and dies; of three acquisitions the first
    reclaims its lease. Then (after the --since cut) one holds it while another falls back to
    zai/glm-4.7 by the chain and reports a 429 there, and one times out. Last, local/solo's
    second acquisition queues behind its first for HOLD_SECS."""
    leave_a_dead_holder(database, config, "zai/glm-5", holder="dies holding it")
    with Limiter(database, config=load_config(config)) as limiter:
        for _ in range(3):
            limiter.acquire("zai/glm-5", holder="one at a time").release()
        time.sleep(MARGIN_SECS)
        cut = datetime.now(tz=timezone.utc)
        time.sleep(MARGIN_SECS)
        with (
            limiter.acquire("zai/glm-5", holder="holds it"),
            limiter.acquire("zai/glm-5", ["zai/glm-4.7"], holder="falls back") as moved,
        ):
            assert (str(moved.key), moved.via) == ("zai/glm-4.7", "chain")
            moved.report_rate_limited(60)
            reported = time.time()
            with pytest.raises(AcquireTimeout):
                limiter.acquire_wait("zai/glm-5", timeout=0, holder="gives up")
        first = limiter.acquire("local/solo", holder="first")
        queued: list[float] = []

        def wait_for_it() -> None:
            asked = time.monotonic()
            limiter.acquire_wait("local/solo", timeout=TIMEOUT, holder="second").release()
            queued.append(time.monotonic() - asked)

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        wait_until(lambda: waiter_count(database) == 1, what="the second to queue")
        time.sleep(HOLD_SECS)
        first.release()
        waiter.join(TIMEOUT)
        assert queued, "the waiter was not granted"

    started = time.time()
    data = json.loads(stats(database, config, "--json"))
    cooled = time.time() - reported
    assert set(data) == {"db", "exists", "since", "now", "history_days", "models", "total"}
    assert (data["db"], data["exists"], data["since"], data["history_days"]) == (
        resolve_target(database).display,
        True,
        None,
        7.0,
    )
    now = datetime.fromisoformat(data["now"].replace("Z", "+00:00")).timestamp()
    assert started - 1 < now < time.time() + 1  # the database's clock, read in between
    solo = data["models"][3]
    wait = solo["wait_max_ms"]
    assert HOLD_SECS * 1000 <= wait < queued[0] * 1000 + 50
    cooling = data["models"][1]["cooling_secs"]
    assert 0 < cooling <= cooled + 1  # cooling down since the report, and still
    no_wait = (0.0, 0.0, 0.0, 0.0)
    assert data["models"] == [
        figures(
            "zai/glm-5", 5, no_wait, via_primary=5, reclaims=1, timeouts=1, queued=1, peak_holders=1
        ),
        figures(
            "zai/glm-4.7",
            1,
            no_wait,
            via_chain=1,
            rate_limited=1,
            cooling_secs=cooling,
            peak_holders=1,
        ),
        figures("claude/sonnet"),
        # the second's grant is the model's second wait (nearest rank: p95 is the 2nd of 2)
        figures(
            "local/solo",
            2,
            (0.0, wait, wait, wait),
            via_primary=1,
            via_queue=1,
            queued=1,
            peak_holders=1,
        ),
    ]
    assert data["total"] == figures(
        None,
        8,
        (0.0, wait, wait, wait),  # p50 is the 4th of 8 waits (0), p95 and p99 the 8th
        via_primary=6,
        via_chain=1,
        via_queue=1,
        queued=2,
        timeouts=1,
        reclaims=1,
        rate_limited=1,
        cooling_secs=cooling,
        peak_holders=2,  # zai/glm-5 and zai/glm-4.7 were held together
    )
    assert FIELDS | set(data) <= documented_fields()

    # After the cut, zai/glm-5 alone: the lease that held it, and the acquire that timed out.
    since = cut.strftime("%Y-%m-%dT%H:%M:%S.%f")  # naive: UTC
    cut_data = json.loads(
        stats(database, config, "--since", since, "--model", "zai/glm-5", "--json")
    )
    shown = datetime.fromisoformat(cut_data["since"].replace("Z", "+00:00"))
    assert abs(shown - cut) < timedelta(milliseconds=2)  # to the millisecond
    glm5 = figures("zai/glm-5", 1, no_wait, via_primary=1, timeouts=1, queued=1, peak_holders=1)
    assert cut_data["models"] == [glm5]
    assert cut_data["total"] == glm5 | {"key": None, "provider": None, "model": None}

    if isinstance(database, str):
        return  # the text is the same on both
    text = stats(database, config, "--since", "1h")
    lines = [line.rstrip() for line in text.splitlines()]
    assert re.fullmatch(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(1h\)", lines[0]), lines[0]
    assert re.fullmatch(r" +wait ms +timed", lines[1]), lines[1]
    header = r"model +acquired +p50/95/99/max +out +reclaims +lost +429s +cooling +peak"
    assert re.fullmatch(header, lines[2]), lines[2]
    rows = {line.split()[0]: line for line in lines[4:] if line and not line.startswith("─")}
    ms = f"{wait:.0f}"
    cells = {  # acquired, waits, timed out, reclaims, lost, 429s, cooling (still going), peak
        "zai/glm-5": r"5 +0/0/0/0 +1 +1 +0 +0 +0 +1",
        "zai/glm-4.7": r"1 \(1 chain\) +0/0/0/0 +0 +0 +0 +1 +\d\S+s +1",
        "claude/sonnet": r"0 +- +0 +0 +0 +0 +0 +0",
        "local/solo": rf"2 \(1 queue\) +0/{ms}/{ms}/{ms} +0 +0 +0 +0 +0 +1",
        "total": rf"8 \(1 queue, 1 chain\) +0/{ms}/{ms}/{ms} +1 +1 +0 +1 +\d\S+s +2",
    }
    assert list(rows) == list(cells)
    for key, expected in cells.items():
        assert re.fullmatch(rf"{re.escape(key)} +{expected}", rows[key]), rows[key]


# --- before anything has run ---------------------------------------------------------------------


def test_before_anything_ran_it_shows_the_configs_models_with_zeros_and_creates_nothing(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    before = sorted(tmp_path.rglob("*"))
    text = stats(database, config, "--since", "30m")
    data = json.loads(stats(database, config, "--json"))
    assert sorted(tmp_path.rglob("*")) == before
    if isinstance(database, str):
        from .sql import rows

        schemas = {str(row[0]) for row in rows(database, "SELECT nspname FROM pg_namespace")}
        assert resolve_target(database).schema not in schemas

    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0] == (
        f"no database yet at {resolve_target(database).display}: nothing has run; the first "
        "acquire (or 'collet-limiter init') creates it"
    )
    assert re.fullmatch(r"since \S+ \S+ UTC \(30m\)", lines[1]), lines[1]
    rows = [line.split() for line in lines[5:] if line and not line.startswith("─")]
    assert rows == [
        [key, "0", "-", "0", "0", "0", "0", "0", "0"]
        for key in ("zai/glm-5", "zai/glm-4.7", "claude/sonnet", "total")
    ]
    assert (data["exists"], data["since"]) == (False, None)
    assert data["models"] == [figures(key) for key in ("zai/glm-5", "zai/glm-4.7", "claude/sonnet")]
    assert data["total"] == figures(None)


# --- the options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("1.5H", timedelta(minutes=90)),
        ("2d", timedelta(days=2)),
        ("2026-12-03T11:00", datetime(2026, 12, 3, 11, tzinfo=timezone.utc)),
        ("2026-12-03 11:00:30.5Z", datetime(2026, 12, 3, 11, 0, 30, 500000, tzinfo=timezone.utc)),
        ("2026-12-03T12:00+01:00", datetime(2026, 12, 3, 11, tzinfo=timezone.utc)),
        ("2026-12-03", datetime(2026, 12, 3, tzinfo=timezone.utc)),
    ],
)
def test_since_takes_a_duration_or_an_iso_time_utc_if_naive(
    value: str, expected: timedelta | datetime
) -> None:
    assert parse_since(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "-1h",
        "1w",
        "3600",
        "1h30m",
        "36501d",
        "9999-12-31T23:59",
        "0001-01-01T00:00+01:00",
    ],
)
def test_a_bad_since_is_a_one_line_usage_error(
    cli: Callable[..., tuple[int, str, str]], value: str, tmp_path: Path
) -> None:
    status, out, err = cli("--db", str(tmp_path / "l.db"), "stats", "--since", value)
    assert (status, out) == (2, "")
    assert err.startswith(f"collet-limiter: Invalid value for '--since': {value!r} ")
    assert err.endswith(
        "use 30s, 30m, 1h, 2d, or an ISO 8601 time such as 2026-12-03T11:00 (UTC if naive) "
        "(see 'collet-limiter stats --help')\n"
    )
    assert err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_bad_model_is_a_usage_error_and_the_help_names_the_forms(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    status, out, err = cli("--db", str(tmp_path / "l.db"), "stats", "--model", "glm-5")
    assert (status, out) == (2, "")
    assert err == (
        "collet-limiter: Invalid value for '--model' / '-m': 'glm-5' is not PROVIDER/MODEL (e.g. "
        "zai-coding/glm-5) (see 'collet-limiter stats --help')\n"
    )
    status, out, _ = cli("stats", "--help")
    assert status == 0
    assert out.startswith("Usage: collet-limiter stats [OPTIONS]")
    flat = " ".join(out.split())
    for words in (
        "--since 30m|1h|2d|TIME",
        "(30s, 30m, 1h, 2d)",
        "ISO 8601",
        "-m, --model",
        "--json",
    ):
        assert words in flat, words


def test_the_window_line_says_when_the_window_reaches_before_the_history_kept() -> None:
    now = datetime(2026, 12, 3, 12, tzinfo=timezone.utc)
    empty = ModelStats(key=None)
    stats_of = {
        days: Stats(since=now - timedelta(days=days), now=now, models=(), total=empty)
        for days in (2, 10)
    }
    assert (
        window_line(stats_of[2], asked=timedelta(days=2), history_days=7)
        == "since 2026-12-01 12:00:00 UTC (2d)"
    )
    assert window_line(stats_of[10], asked=now - timedelta(days=10), history_days=7) == (
        "since 2026-11-23 12:00:00 UTC; the history keeps 7 days, older events are pruned"
    )
    everything = Stats(since=None, now=now, models=(), total=empty)
    assert window_line(everything, asked=None, history_days=0.5) == "all history kept (0.5 days)"
