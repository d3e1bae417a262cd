"""Worker processes for the history test: ``python tests/history_workers.py COMMAND ...``.

Each worker uses only the public API and writes down what it saw itself, so that the test can
hold the ``events`` table against it: one JSON line per attempt in its ``--records`` file (the
holder label, how it asked, CLOCK_MONOTONIC ns before the call and after it returned, and what
it got: the lease's id, key and via, an ``AcquireTimeout``, or no room), one per release (and
whether the lease was found lost), and the observer's ``+``/``-`` lines (see ``observer.py``) in
its ``--events`` file. Every holder label is unique, so timeouts, which have no lease id, can be
matched to their events too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from typing import IO, Any

from collet_limiter import Acquired, AcquireTimeout, Lease, Limiter, load_config

# How long a worker waits for something it was told will happen (the test's go, the heartbeat
# noticing a lost lease): far longer than it takes, so only a bug runs into it.
PATIENCE_SECS = 120.0
# The wait of an acquire that is meant to succeed: bounded, as every wait in the suite is.
LONG_TIMEOUT_SECS = 30.0


def _limiter(args: argparse.Namespace) -> Limiter:
    # Quick polls (as tests/workers.py's), so that a waiter whose wake-up were missed still
    # notices its grant within 50 ms: the test bounds the time from a grant to its return.
    return Limiter(
        args.db, config=load_config(args.config), poll_interval=0.002, max_poll_interval=0.05
    )


class Log:
    """A worker's two files: its records (JSON lines) and the observer's events."""

    def __init__(self, records: IO[str], events: IO[str]) -> None:
        self.records, self.events = records, events

    def record(self, **fields: Any) -> None:
        self.records.write(json.dumps(fields) + "\n")

    def acquired(self, label: str, mode: str, asked: int, lease: Lease) -> None:
        returned = time.monotonic_ns()
        self.events.write(f"{returned} + {lease.key} {lease.via}\n")
        self.record(
            label=label,
            mode=mode,
            outcome="acquired",
            asked_ns=asked,
            returned_ns=returned,
            lease_id=lease.id,
            key=str(lease.key),
            via=lease.via,
            primary=str(lease.primary),
        )

    def released(self, label: str, lease: Lease, *, observed: bool = True) -> None:
        if observed:
            self.events.write(f"{time.monotonic_ns()} - {lease.key} {lease.via}\n")
        lease.release()
        self.record(label=label, outcome="released", lease_id=lease.id, lost=lease.lost)


def churn(args: argparse.Namespace) -> int:
    """One acquire, READY, then on the ``--go`` file ``--count`` attempts on ``--primary``
    (chain ``--chain``) in four ways chosen at random: ``acquire`` with the chain, ``acquire``
    without it (capability fallback), ``acquire_wait`` on the primary or the chain model, and
    ``acquire_with_fallback`` (never waits). A third of the waiting attempts get a timeout of
    at most 30 ms, which often runs out."""
    rng = random.Random(args.seed)
    primary, chain = args.primary, args.chain
    with (
        _limiter(args) as limiter,
        open(args.records, "a", buffering=1) as records,
        open(args.events, "a", buffering=1) as events,
    ):
        log = Log(records, events)
        # One acquire before the test starts the others: the first time a process runs a
        # statement, SQLAlchemy compiles it inside the transaction, which (on 2 loaded cores)
        # can take the writer lock for tens of ms; done here, no other process waits behind it.
        label, asked = f"{args.name}-warm", time.monotonic_ns()
        lease = limiter.acquire(primary, [chain], timeout=LONG_TIMEOUT_SECS, holder=label)
        log.acquired(label, "warm", asked, lease)
        log.released(label, lease)
        _ready(args.go)
        for index in range(args.count):
            label = f"{args.name}-{index}"
            mode = rng.choice(["chain", "capability", "wait", "wait", "try"])
            timeout = rng.uniform(0, 0.03) if rng.random() < 1 / 3 else LONG_TIMEOUT_SECS
            wanted = primary if mode != "wait" or rng.random() < 2 / 3 else chain
            asked = time.monotonic_ns()
            try:
                if mode == "chain":
                    lease = limiter.acquire(primary, [chain], timeout=timeout, holder=label)
                elif mode == "capability":
                    lease = limiter.acquire(primary, timeout=timeout, holder=label)
                elif mode == "wait":
                    lease = limiter.acquire_wait(wanted, timeout=timeout, holder=label)
                else:
                    outcome = limiter.acquire_with_fallback(primary, [chain], holder=label)
                    if not isinstance(outcome, Acquired):
                        log.record(label=label, mode=mode, outcome="busy", primary=wanted)
                        continue
                    lease = outcome.lease
            except AcquireTimeout:
                log.record(
                    label=label,
                    mode=mode,
                    outcome="timeout",
                    asked_ns=asked,
                    returned_ns=time.monotonic_ns(),
                    primary=wanted,
                )
                continue
            log.acquired(label, mode, asked, lease)
            time.sleep(rng.uniform(args.hold_min_ms, args.hold_max_ms) / 1000)
            log.released(label, lease)
    return 0


def _ready(go: str | None) -> None:
    """Say READY, then wait for the test's ``go`` file (the test sets the stage meanwhile)."""
    print("READY", flush=True)
    deadline = time.monotonic() + PATIENCE_SECS
    while go is not None and not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit(f"no {go} after {PATIENCE_SECS} s")
        time.sleep(0.005)


def _await_command(expected: str) -> None:
    line = sys.stdin.readline().strip()
    if line != expected:
        raise SystemExit(f"expected the command {expected!r} on stdin, got {line!r}")


def hold(args: argparse.Namespace) -> int:
    """Acquire ``--count`` leases on ``--primary``, print ``HELD <asked ns> <lease id>...``,
    then hold until killed (``--then wait``), or stop itself (``--then stop``, one lease): see
    ``_stop_and_lose``."""
    with (
        _limiter(args) as limiter,
        open(args.records, "a", buffering=1) as records,
        open(args.events, "a", buffering=1) as events,
    ):
        log = Log(records, events)
        first = time.monotonic_ns()  # before the claim that starts the heartbeat thread
        leases = []
        for index in range(args.count):
            label = f"{args.name}-{index}"
            asked = time.monotonic_ns()
            lease = limiter.acquire(args.primary, timeout=LONG_TIMEOUT_SECS, holder=label)
            log.acquired(label, "hold", asked, lease)
            leases.append((label, lease))
        print("HELD", first, *(lease.id for _, lease in leases), flush=True)
        if args.then == "stop":
            ((label, lease),) = leases
            return _stop_and_lose(log, label, lease)
        _await_command("release")  # the test kills it first
        for label, lease in leases:
            log.released(label, lease)
    return 0


def _stop_and_lose(log: Log, label: str, lease: Lease) -> int:
    """Stop this process (SIGSTOP to itself) while it holds ``lease``, and once continued, do
    what the test says: ``lose`` (wait for the heartbeat to find the lease reclaimed, then
    release it) or ``release`` (when the test could not use this stop).

    It writes its observer exit and ``STOPPING <ns>`` first: a stopped process runs nothing,
    so its use of the slot ends there; what it believes after it is continued, until its
    heartbeat tells it, is what a lease's TTL does not guarantee (see ``Lease``)."""
    stopping = time.monotonic_ns()
    log.events.write(f"{stopping} - {lease.key} {lease.via}\n")
    print(f"STOPPING {stopping}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    command = sys.stdin.readline().strip()
    if command == "release":
        log.released(label, lease, observed=False)
        print("RELEASED", int(lease.lost), flush=True)
        return 0
    if command != "lose":
        raise SystemExit(f"unknown command {command!r}")
    deadline = time.monotonic() + PATIENCE_SECS
    # The heartbeat renews at once when the process continues (its due time passed while it
    # was stopped) and marks the lease lost. Waiting for that, rather than releasing at once,
    # leaves one writer of the ``lost`` event.
    while not lease.lost:
        if time.monotonic() > deadline:
            raise SystemExit("the heartbeat never found the lease lost")
        time.sleep(0.01)
    log.released(label, lease, observed=False)
    print("RELEASED", int(lease.lost), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["churn", "hold"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--records", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--primary", required=True)
    parser.add_argument("--chain")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-min-ms", type=float, default=30.0)
    parser.add_argument("--hold-max-ms", type=float, default=60.0)
    parser.add_argument("--then", choices=["wait", "stop"], default="wait")
    parser.add_argument("--go")
    args = parser.parse_args()
    return {"churn": churn, "hold": hold}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
