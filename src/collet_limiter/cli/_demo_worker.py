"""One worker process of ``collet-limiter demo``: ``python -m collet_limiter.cli._demo_worker``.

It uses only the public API, as an agent process would: it asks for a model, with or without a
fallback chain, holds what it is granted for a while, and after releasing records the grant in
the demo database's ``demo_events`` table. Times come from CLOCK_MONOTONIC, one clock for every
process on the host, and the recorded interval (taken after the acquire returned, before the
release) lies inside the lease's real life, so the summary's peaks never overstate overlap.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from collet_limiter import Limiter, load_config

if TYPE_CHECKING:
    from collections.abc import Sequence

# (weight, primary, fallback chain): the premium model is the most wanted, and some requests
# name a chain, so that chain, capability and CLI fallbacks all happen under load.
REQUESTS: Final = (
    (2, "zai/glm-5", ()),
    (1, "zai/glm-5", ("zai/glm-4.7",)),
    (1, "zai/glm-4.7", ()),
)

EVENTS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS demo_events (
    id INTEGER PRIMARY KEY,
    worker TEXT NOT NULL,
    primary_key TEXT NOT NULL,   -- the model asked for
    chain TEXT NOT NULL,         -- its fallback chain, comma-separated
    key TEXT NOT NULL,           -- the model granted
    via TEXT NOT NULL,           -- primary | chain | capability | cli | queue
    requested REAL NOT NULL,     -- CLOCK_MONOTONIC seconds: acquire called
    granted REAL NOT NULL,       -- acquire returned
    released REAL NOT NULL       -- about to release
)
"""

INSERT_EVENT: Final = (
    "INSERT INTO demo_events (worker, primary_key, chain, key, via, requested, granted, released)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="collet-limiter demo worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--deadline", type=float, required=True, help="CLOCK_MONOTONIC seconds")
    parser.add_argument("--hold-min", type=float, default=0.3)
    parser.add_argument("--hold-max", type=float, default=1.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Acquire, hold, release and record until the stop file appears or the deadline passes."""
    args = _arguments(argv)
    rng = random.Random(args.seed)  # noqa: S311 - a demo's load, not security
    stop = Path(args.stop_file)
    weights = [weight for weight, _, _ in REQUESTS]
    events = sqlite3.connect(args.db, timeout=30.0, isolation_level=None)
    try:
        with Limiter(args.db, config=load_config(args.config)) as limiter:
            while not stop.exists() and time.monotonic() < args.deadline:
                _, primary, chain = rng.choices(REQUESTS, weights)[0]
                requested = time.monotonic()
                with limiter.acquire(primary, list(chain), holder=args.name) as lease:
                    granted = time.monotonic()
                    time.sleep(rng.uniform(args.hold_min, args.hold_max))
                    released = time.monotonic()
                events.execute(
                    INSERT_EVENT,
                    (
                        args.name,
                        primary,
                        ",".join(chain),
                        str(lease.key),
                        lease.via,
                        requested,
                        granted,
                        released,
                    ),
                )
                time.sleep(rng.uniform(0.0, 0.15))
    finally:
        events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
