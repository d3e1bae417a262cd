"""``collet-limiter demo``: real worker processes compete for three models, then SQL sums it up.

The demo runs on a temporary database with the built-in config below. Each worker (see
``_demo_worker``) records every grant in the ``demo_events`` table of that database, and the
summary is read back from it with SQL (window functions for the peaks and percentiles), never
from the limiter's own counters.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from collet_limiter import Inspector, Limiter, load_config

from ._demo_worker import EVENTS_TABLE
from ._main import EXIT_SIGNAL_BASE, error
from ._output import status_line

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from rich.console import Console

DEMO_CONFIG: Final = """\
# The collet-limiter demo's config: three models, one of them a CLI provider.
[collaboration]
max_agents = 5

[[models]]
name = "glm-5"
concurrency_limit = 2
cost_tier = "premium"
supports_tools = true

[[models]]
name = "glm-4.7"
concurrency_limit = 2
cost_tier = "standard"
supports_tools = true

[[models]]
name = "sonnet"
concurrency_limit = 1
cost_tier = "standard"
supports_tools = true

[[providers]]
name = "zai"
models = ["glm-5", "glm-4.7"]

[[providers]]
name = "claude"
cli = "claude"
models = ["sonnet"]

[limiter]
lease_ttl_secs = 15
"""

# What the demo must show before it stops: each fallback kind and a wait in the queue.
REQUIRED_KINDS: Final = ("chain", "capability", "cli", "queue")
ALL_KINDS: Final = ("primary", "chain", "capability", "cli", "queue")
# The demo never runs longer than this, even when a kind is still missing (its promise is to
# finish in under a minute).
HARD_LIMIT_SECS: Final = 45.0
# How long workers get to finish their last hold and exit once told to stop.
DRAIN_SECS: Final = 15.0
REFRESH_SECS: Final = 0.25
PLAIN_EVERY_SECS: Final = 1.0

# Peak concurrent holders per model: a running sum over grant (+1) and release (-1) edges in
# time order, releases first on a tie.
PEAKS_SQL: Final = """
WITH edges AS (
        SELECT key, granted AS at, 1 AS delta FROM demo_events
        UNION ALL
        SELECT key, released AS at, -1 AS delta FROM demo_events
    ),
    running AS (
        SELECT key, SUM(delta) OVER (
            PARTITION BY key ORDER BY at, delta ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS holders
        FROM edges
    ),
    peaks AS (SELECT key, MAX(holders) AS peak FROM running GROUP BY key),
    grants AS (SELECT key, COUNT(*) AS grants FROM demo_events GROUP BY key)
SELECT m.provider || '/' || m.model, m.concurrency_limit, COALESCE(p.peak, 0),
       COALESCE(g.grants, 0)
FROM models AS m
LEFT JOIN peaks AS p ON p.key = m.provider || '/' || m.model
LEFT JOIN grants AS g ON g.key = m.provider || '/' || m.model
WHERE m.position IS NOT NULL
ORDER BY m.position
"""

# The same running sum over every model: the peak against the global cap.
GLOBAL_PEAK_SQL: Final = """
WITH edges AS (
        SELECT granted AS at, 1 AS delta FROM demo_events
        UNION ALL
        SELECT released AS at, -1 AS delta FROM demo_events
    ),
    running AS (
        SELECT SUM(delta) OVER (
            ORDER BY at, delta ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS holders
        FROM edges
    )
SELECT COALESCE(MAX(holders), 0),
       (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'max_agents')
FROM running
"""

VIA_SQL: Final = "SELECT via, COUNT(*) FROM demo_events GROUP BY via"

# Queue waits (acquire called to granted, for grants that waited in the queue), with p50 and
# p99 by the nearest-rank method: the value at rank ceil(p * n / 100).
WAITS_SQL: Final = """
WITH waits AS (
    SELECT granted - requested AS wait,
           ROW_NUMBER() OVER (ORDER BY granted - requested) AS rank,
           COUNT(*) OVER () AS n
    FROM demo_events
    WHERE via = 'queue'
)
SELECT COUNT(*),
       MAX(CASE WHEN rank = (n * 50 + 99) / 100 THEN wait END),
       MAX(CASE WHEN rank = (n * 99 + 99) / 100 THEN wait END),
       MAX(wait)
FROM waits
"""


@dataclass(frozen=True, slots=True)
class Summary:
    """What the demo_events table says happened."""

    models: list[tuple[str, int, int, int]]  # key, limit, peak holders, grants
    global_peak: int
    cap: int
    via: dict[str, int]
    waits: int
    p50: float | None
    p99: float | None
    max_wait: float | None

    @property
    def limits_held(self) -> bool:
        """No model ever had more holders than its limit, nor all of them more than the cap."""
        return self.global_peak <= self.cap and all(
            peak <= limit for _, limit, peak, _ in self.models
        )

    @property
    def missing(self) -> list[str]:
        """The fallback kinds (and the queue) that did not happen."""
        return [kind for kind in REQUIRED_KINDS if not self.via.get(kind)]


def via_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Grants so far by how they were granted."""
    return {str(via): int(count) for via, count in conn.execute(VIA_SQL)}


def summarize(db: Path) -> Summary:
    """Read the summary back from the demo database by SQL."""
    conn = sqlite3.connect(db, timeout=30.0)
    try:
        models = [
            (str(k), int(lim), int(peak), int(n)) for k, lim, peak, n in conn.execute(PEAKS_SQL)
        ]
        global_peak, cap = conn.execute(GLOBAL_PEAK_SQL).fetchone()
        waits, p50, p99, max_wait = conn.execute(WAITS_SQL).fetchone()
        return Summary(
            models=models,
            global_peak=int(global_peak),
            cap=int(cap),
            via=via_counts(conn),
            waits=int(waits),
            p50=p50,
            p99=p99,
            max_wait=max_wait,
        )
    finally:
        conn.close()


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def summary_lines(summary: Summary) -> list[str]:
    """The summary for people."""
    width = max(len(key) for key, _, _, _ in summary.models)
    lines = [
        "Summary, read back from the demo_events table by SQL:",
        "",
        f"  {'model':<{width}}  limit  peak holders  grants",
    ]
    lines += [
        f"  {key:<{width}}  {limit:>5}  {peak:>12}  {grants:>6}"
        for key, limit, peak, grants in summary.models
    ]
    total = sum(grants for _, _, _, grants in summary.models)
    lines.append(
        f"  {'all (cap)':<{width}}  {summary.cap:>5}  {summary.global_peak:>12}  {total:>6}"
    )
    fallbacks = ", ".join(
        f"{kind} {summary.via.get(kind, 0)}" for kind in ("chain", "capability", "cli")
    )
    lines += [
        "",
        f"  granted as asked   {summary.via.get('primary', 0)}",
        f"  fallbacks by kind  {fallbacks}",
        (
            f"  queue waits        {summary.waits}: p50 {_secs(summary.p50)}, "
            f"p99 {_secs(summary.p99)}, max {_secs(summary.max_wait)}"
        ),
        "",
    ]
    if summary.limits_held:
        lines.append(
            "ok: no model ever had more holders than its limit, nor all models more than the cap"
        )
    else:
        lines.append("FAILED: a limit was exceeded (see the peaks above)")
    if summary.missing:
        lines.append(f"note: no {', '.join(summary.missing)} this time (try a longer --duration)")
    return lines


def _worker_command(tmp: Path, *, index: int, deadline: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "collet_limiter.cli._demo_worker",
        "--db",
        str(tmp / "limiter.db"),
        "--config",
        str(tmp / "config.toml"),
        "--name",
        f"worker-{index}",
        "--seed",
        str(index),
        "--stop-file",
        str(tmp / "stop"),
        "--deadline",
        repr(deadline),
    ]


def _start_workers(tmp: Path, count: int, deadline: float) -> list[subprocess.Popen[bytes]]:
    workers = []
    for index in range(1, count + 1):
        log = (tmp / f"worker-{index}.log").open("wb")
        try:
            workers.append(
                subprocess.Popen(
                    _worker_command(tmp, index=index, deadline=deadline),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        finally:
            log.close()
    return workers


def _stop_workers(tmp: Path, workers: Sequence[subprocess.Popen[bytes]]) -> None:
    (tmp / "stop").touch()
    deadline = time.monotonic() + DRAIN_SECS
    for worker in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(max(0.1, deadline - time.monotonic()))
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _progress(elapsed: float, duration: float, counts: dict[str, int]) -> str:
    granted = sum(counts.values())
    kinds = ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in ALL_KINDS)
    return f"{elapsed:5.1f}s of ~{duration:g}s · {granted} granted: {kinds}"


def _watch_workers(
    inspector: Inspector,
    events: sqlite3.Connection,
    workers: Sequence[subprocess.Popen[bytes]],
    *,
    duration: float,
    console: Console,
) -> None:
    """Show the live view (or plain lines) until enough happened or the workers are gone."""
    started = time.monotonic()
    last_plain = -PLAIN_EVERY_SECS
    live = None
    if console.is_terminal:
        from rich.live import Live

        live = Live(
            console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        )
        live.start()
    try:
        while True:
            elapsed = time.monotonic() - started
            counts = via_counts(events)
            enough = elapsed >= duration and all(counts.get(kind) for kind in REQUIRED_KINDS)
            if enough or elapsed >= HARD_LIMIT_SECS or all(w.poll() is not None for w in workers):
                return
            progress = _progress(elapsed, duration, counts)
            if live is not None:
                from rich.text import Text

                from ._tables import live_view

                header = Text(
                    f"collet-limiter demo · {len(workers)} workers · {progress}", style="bold"
                )
                live.update(live_view(inspector, header=header), refresh=True)
            elif elapsed - last_plain >= PLAIN_EVERY_SECS:
                last_plain = elapsed
                click.echo(f"  {progress}")
                click.echo(f"         {status_line(inspector.status())}")
            time.sleep(REFRESH_SECS)
    finally:
        if live is not None:
            live.stop()


def _intro(workers: int, duration: float, db: Path) -> list[str]:
    return [
        f"collet-limiter demo: {workers} worker processes compete for 3 models for ~{duration:g}s",
        "  zai/glm-5      premium, limit 2   asked for most, a third of the time with the chain",
        "                                    zai/glm-4.7",
        "  zai/glm-4.7    standard, limit 2  asked for in a quarter of the requests",
        "  claude/sonnet  CLI provider, limit 1",
        f"  global cap 5; each holds its model 0.3-1.0s; database {db}",
        "",
    ]


@contextlib.contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo through its cleanup (workers stopped, files removed)."""

    def leave(signum: int, _frame: object) -> None:
        error(f"{signal.Signals(signum).name}: stopping the demo")
        raise SystemExit(EXIT_SIGNAL_BASE + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(*, workers: int, duration: float, keep: bool) -> int:
    """Run the demo; exit status 0 when the limits held and every kind was shown."""
    with _terminated_as_exit():
        return _run_demo(workers=workers, duration=duration, keep=keep)


def _run_demo(*, workers: int, duration: float, keep: bool) -> int:
    from ._tables import make_console

    console = make_console()
    tmp = Path(tempfile.mkdtemp(prefix="collet-limiter-demo-"))
    db = tmp / "limiter.db"
    try:
        (tmp / "config.toml").write_text(DEMO_CONFIG)
        Limiter(db, config=load_config(tmp / "config.toml")).close()
        events = sqlite3.connect(db, timeout=30.0, isolation_level=None)
        events.execute(EVENTS_TABLE)
        for line in _intro(workers, duration, db):
            click.echo(line)
        running = _start_workers(tmp, workers, time.monotonic() + HARD_LIMIT_SECS + 5)
        try:
            with Inspector(db, config=load_config(tmp / "config.toml")) as inspector:
                _watch_workers(inspector, events, running, duration=duration, console=console)
        finally:
            _stop_workers(tmp, running)
            events.close()
        failed = [i for i, w in enumerate(running, start=1) if w.returncode != 0]
        for index in failed:
            log = (tmp / f"worker-{index}.log").read_text(errors="replace").strip().splitlines()
            click.echo(f"worker-{index} failed: {log[-1] if log else 'no output'}", err=True)
        summary = summarize(db)
        click.echo("")
        for line in summary_lines(summary):
            click.echo(line)
        if keep:
            query = "SELECT via, count(*) FROM demo_events GROUP BY via"
            click.echo(f"\nthe demo database is kept: sqlite3 {db} '{query}'")
        return 0 if summary.limits_held and not summary.missing and not failed else 1
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
