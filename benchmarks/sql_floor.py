"""The floor under an uncontended cycle: collet-limiter's own statements on the bare driver.

    python benchmarks/sql_floor.py [--rounds 5] [--cycles 3000]

Records the SQL one uncontended acquire and release of the sync face sends to SQLite (every
statement's text and parameters, and the BEGIN IMMEDIATE and COMMIT around them), then, round
after round in this one process:

- **collet-limiter (sync)**: ``limiter.acquire("x/y").release()``;
- **its statements, bare driver**: the recorded statements replayed on a stdlib ``sqlite3``
  connection to the same file, with a fresh lease token each cycle and the lease id the claim
  returned (no Python of ours, no SQLAlchemy: what SQLite itself costs for our schema, our
  history row and our two write transactions);
- **sqlite3 peer**: bench.py's "sqlite3, 5 ms poll" lease table (BEGIN IMMEDIATE, a count, an
  insert, COMMIT; the release a DELETE in autocommit) on a file of its own.

Prints cycles/s (median and range over the rounds), the ratios between them, and the time of
each replayed statement. The uncontended goal (0.5x the peer) cannot be met while the floor
itself is below it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mechanisms import Sqlite3Poll

from collet_limiter import Limiter


class _Recorder:
    """Wraps a driver connection or cursor: notes each statement and its parameters."""

    def __init__(self, inner: Any, log: list[tuple[str, tuple[Any, ...]]]) -> None:
        self._inner, self._log = inner, log

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._log.append((sql, tuple(params)))
        return self._inner.execute(sql, params)

    def cursor(self) -> _Recorder:
        return _Recorder(self._inner.cursor(), self._log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def record_cycle(db: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements of one uncontended acquire and release, as sent to the driver."""
    log: list[tuple[str, tuple[Any, ...]]] = []
    with Limiter(db) as limiter:
        for _ in range(20):  # warm: the file exists, the statements are compiled
            limiter.acquire("x/y").release()
        # A benchmark's peek: the connection the next transactions will take (a LiteConnection
        # on SQLite), whose driver connection (cursors, BEGIN and COMMIT) is wrapped.
        conn = limiter._runtime._spare[-1]  # noqa: SLF001
        driver = conn.driver
        conn.driver = _Recorder(driver, log)
        try:
            limiter.acquire("x/y").release()
        finally:
            conn.driver = driver
    return [(sql, params) for sql, params in log if not sql.startswith("PRAGMA")]


class Replay:
    """The recorded cycle on a bare ``sqlite3`` connection, fresh token and lease id each time."""

    def __init__(self, db: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.statements = statements
        claim = next(p for s, p in statements if s.startswith("INSERT INTO leases"))
        self.token = next(v for v in claim if isinstance(v, str) and len(v) == 32)
        release = next(p for s, p in statements if s.startswith("DELETE FROM leases"))
        self.lease_id = next(v for v in release if isinstance(v, int))
        self.times = [0.0] * len(statements)

    def cycle(self, *, timed: bool = False) -> None:
        token, lease_id = os.urandom(16).hex(), None
        for i, (sql, params) in enumerate(self.statements):
            values = tuple(
                token if v == self.token else lease_id if v == self.lease_id else v for v in params
            )
            started = time.perf_counter() if timed else 0.0
            rows = self.conn.execute(sql, values).fetchall()
            if sql.startswith("INSERT INTO leases"):
                lease_id = rows[0][0]
            if timed:
                self.times[i] += time.perf_counter() - started


def rate(func: Any, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        func()
    return cycles / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collet-sql-floor-") as tmp:
        db = str(Path(tmp) / "limiter.db")
        statements = record_cycle(db)
        replay = Replay(db, statements)
        peer = Sqlite3Poll({"db": str(Path(tmp) / "peer.db"), "limit": 3})

        def peer_cycle() -> None:
            peer.acquire()
            peer.release()

        names = ["collet-limiter (sync)", "its statements, bare driver", "sqlite3 peer"]
        results: dict[str, list[float]] = {name: [] for name in names}
        with Limiter(db) as limiter:

            def ours() -> None:
                limiter.acquire("x/y").release()

            for func in (ours, replay.cycle, peer_cycle):  # warm-up
                rate(func, 200)
            for _ in range(args.rounds):
                for name, func in zip(names, (ours, replay.cycle, peer_cycle), strict=True):
                    results[name].append(rate(func, args.cycles))
        for _ in range(args.cycles):
            replay.cycle(timed=True)
        peer.close()
        replay.conn.close()

    print(
        f"{args.rounds} rounds of {args.cycles} cycles, alternating; {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}\n"
    )
    print("| | cycles/s, median | range |")
    print("|---|---:|---:|")
    medians = {}
    for name, samples in results.items():
        medians[name] = statistics.median(samples)
        print(f"| {name} | {medians[name]:,.0f} | {min(samples):,.0f}-{max(samples):,.0f} |")
    ours_, floor, peer_ = (medians[n] for n in names)
    print(
        f"\nfloor / peer {floor / peer_:.2f}x; collet-limiter / peer {ours_ / peer_:.2f}x; "
        f"collet-limiter / floor {ours_ / floor:.2f}x "
        f"(our Python: {1e6 / ours_ - 1e6 / floor:.0f} us of a "
        f"{1e6 / ours_:.0f} us cycle)\n"
    )
    print("| replayed statement | us per cycle |")
    print("|---|---:|")
    for (sql, _params), spent in zip(statements, replay.times, strict=True):
        text = " ".join(sql.split())
        shown = text if len(text) <= 60 else text[:57] + "..."
        print(f"| `{shown}` | {spent / args.cycles * 1e6:.1f} |")


if __name__ == "__main__":
    main()
