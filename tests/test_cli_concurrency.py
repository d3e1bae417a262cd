"""Many ``collet-limiter run`` at once, launched by ``xargs -P`` as a real peer, obey the limits.

The check is independent of the limiter: each gated command appends ``<CLOCK_MONOTONIC ns> +
<granted key> <via>`` when it starts and ``... -`` when it ends to its own file, and the merged
files are swept in time order (``observer.py``). Each recorded interval lies inside the lease's
life (the lease is granted before the command starts and released after it exits), so overlaps
the sweep finds, the leases had too. Both backends: a SQLite file and a PostgreSQL group.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from typing import TYPE_CHECKING

import pytest

from .cli_helpers import TIMEOUT, cli_command, query
from .observer import observe_files

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = """
[collaboration]
max_agents = 3

[[models]]
name = "a"
concurrency_limit = 2

[[models]]
name = "b"
concurrency_limit = 2

[[providers]]
name = "p"
models = ["a", "b"]
"""

# The gated command: record the start, hold for a while, record the end, in its own file.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    key, via = os.environ["COLLET_LIMITER_KEY"], os.environ["COLLET_LIMITER_VIA"]
    with open(sys.argv[1], "a", buffering=1) as events:
        events.write(f"{time.monotonic_ns()} + {key} {via}\\n")
        time.sleep(float(sys.argv[2]))
        events.write(f"{time.monotonic_ns()} - {key} {via}\\n")
    """
)


def launch_with_xargs(
    tmp_path: Path, database: Path | str, *, runs: int, parallel: int, hold: float
) -> Path:
    """Run ``runs`` gated commands, ``parallel`` at a time, through xargs; the events folder."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    events = tmp_path / "events"
    events.mkdir()
    db = str(database)
    assert (
        subprocess.run(
            cli_command("--db", db, "--config", str(config), "init"),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        ).returncode
        == 0
    )
    command = cli_command(
        "--db", db, "--config", str(config), "-q",
        "run", "--model", "p/a", "--fallback", "p/b", "--holder", "xargs-{}",
        "--", "python3", "-c", CHILD, str(events / "{}.events"), str(hold),
    )  # fmt: skip
    xargs = shutil.which("xargs")
    assert xargs is not None
    result = subprocess.run(
        [xargs, "-P", str(parallel), "-I{}", *command],
        input="".join(f"{n}\n" for n in range(runs)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # xargs: 123 if any run failed
    assert query(database, "SELECT count(*) FROM leases") == [(0,)]
    assert query(database, "SELECT count(*) FROM waiters") == [(0,)]
    return events


def check(events: Path, runs: int) -> None:
    seen = observe_files(sorted(events.glob("*.events")))
    assert (seen.enters, seen.exits) == (runs, runs)
    assert seen.peak["p/a"] <= 2 and seen.peak["p/b"] <= 2
    assert seen.peak_total <= 3
    # The limiter had to act: more ran at once than one model allows, and some waited or fell back.
    assert seen.peak_total >= 3
    assert seen.via["chain"] + seen.via["queue"] > 0


def test_concurrent_runs_from_xargs_respect_model_limits_and_the_global_cap(
    tmp_path: Path, database: Path | str
) -> None:
    events = launch_with_xargs(tmp_path, database, runs=12, parallel=8, hold=1.0)
    check(events, 12)


@pytest.mark.slow
def test_many_concurrent_runs_from_xargs_respect_the_limits(
    tmp_path: Path, database: Path | str
) -> None:
    events = launch_with_xargs(tmp_path, database, runs=80, parallel=24, hold=0.5)
    check(events, 80)
