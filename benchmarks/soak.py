"""Crash and stall soak: workers acquire and release while a killer SIGKILLs and SIGSTOPs them.

    python benchmarks/soak.py --seconds 60 --processes 16

16 (or more) worker processes acquire and release permits on three models through the public
API (``acquire`` with fallback chains, ``acquire_with_fallback``, ``acquire_wait`` with
timeouts), while a killer sends SIGKILL to random holders and waiters (and restarts them) and
SIGSTOP/SIGCONT to others, a few of them for longer than the lease TTL.

An independent observer checks the limits. Each worker appends ``+`` when an acquire returns
and ``-`` just before it releases, with CLOCK_MONOTONIC nanoseconds (one clock for every process
on the host), to its own events file; after a release it appends whether the lease was ``lost``
(reclaimed while its holder stalled past the TTL, which the holder learns from ``lease.lost``).
A killed holder's interval ends when the killer sent SIGKILL. The observer merges every file
and counts, at each grant, the holders per model and in all. A count above a limit is a
violation unless a lost lease explains it; lost leases are counted and reported, never silent.

At the end every worker is told to stop, the database is read with plain ``sqlite3``: no lease
or ticket may be left except those of killed holders, and one ``reap()`` (what
``collet-limiter reap`` does) must leave none. Any exception a worker met, a driver error above
all ("database is locked"), is logged to its events file and counted.

Prints operations, kills, stops, recoveries (a killed holder's lease reclaimed, and the first
grant of its model after that), the largest recovery latency, lost leases and violations.
``--json PATH`` also writes the figures as JSON (the test suite's short soak reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODELS = {"zai/glm-5": 2, "zai/glm-4.7": 1, "zai/glm-4.7-flash": 2}
CAP = 4
# After the run, how long the workers may go on before a killed holder's lease still in the
# table counts as unrecovered: a dead holder's lease expires within one TTL of its death, and
# the longest stop (1.8 TTLs) ended when the run did.
SETTLE_TTLS = 3

CONFIG = """
[collaboration]
max_agents = {cap}

[[models]]
name = "glm-5"
concurrency_limit = 2

[[models]]
name = "glm-4.7"
concurrency_limit = 1

[[models]]
name = "glm-4.7-flash"
concurrency_limit = 2

[[providers]]
name = "zai"
models = ["glm-5", "glm-4.7", "glm-4.7-flash"]

[limiter]
lease_ttl_secs = {ttl}
"""


# --- the worker ------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Acquire, hold, release and record until the stop file appears."""
    from collet_limiter import Acquired, AcquireTimeout, Limiter, LimiterError, load_config

    rng = random.Random(args.seed)
    stop = Path(args.stop)
    models = list(MODELS)
    with open(args.events, "a", buffering=1) as events:

        def write(*parts: object) -> None:
            events.write(" ".join(str(p) for p in (time.monotonic_ns(), *parts)) + "\n")

        class ToEvents(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.WARNING:
                    write("W", record.getMessage().replace("\n", " "))

        logging.getLogger("collet_limiter").addHandler(ToEvents())
        write("S", os.getpid())
        try:
            limiter = Limiter(args.db, config=load_config(args.config))
        except Exception as exc:
            write("X" if not isinstance(exc, LimiterError) else "E", type(exc).__name__, exc)
            return 1
        with limiter:
            while not stop.exists():
                primary = rng.choice(models)
                chain = [m for m in models if m != primary and rng.random() < 0.5]
                op = rng.random()
                try:
                    if op < 0.5:
                        lease = limiter.acquire(
                            primary, chain, timeout=rng.choice([None, 2.0, 5.0]), holder="soak"
                        )
                    elif op < 0.7:
                        outcome = limiter.acquire_with_fallback(primary, chain, holder="soak")
                        if not isinstance(outcome, Acquired):
                            write("Q", primary)
                            time.sleep(rng.uniform(0.0, 0.05))
                            continue
                        lease = outcome.lease
                    else:
                        lease = limiter.acquire_wait(
                            primary, timeout=rng.uniform(0.5, 3.0), holder="soak"
                        )
                except AcquireTimeout:
                    write("T", primary)
                    continue
                except Exception as exc:
                    kind = "E" if isinstance(exc, LimiterError) else "X"
                    write(kind, type(exc).__name__, str(exc).replace("\n", " "))
                    time.sleep(0.1)
                    continue
                write("+", lease.key, lease.via, lease.id)
                time.sleep(rng.uniform(0.0, args.hold_ms / 1000))
                write("-", lease.key, lease.via, lease.id)
                try:
                    lease.release()
                except Exception as exc:
                    kind = "E" if isinstance(exc, LimiterError) else "X"
                    write(kind, type(exc).__name__, str(exc).replace("\n", " "))
                write("R", lease.id, int(lease.lost))
                time.sleep(rng.uniform(0.0, args.pause_ms / 1000))
        write("D")
    return 0


# --- the observer ----------------------------------------------------------------------------


@dataclass
class Interval:
    """One hold as its holder recorded it."""

    start: int
    end: int | None
    key: str
    via: str
    lost: bool
    worker: str


@dataclass
class Observation:
    """What the merged events files show."""

    grants: int = 0
    via: Counter[str] = field(default_factory=Counter)
    queue_waits: int = 0
    timeouts: int = 0
    lost: int = 0
    violations: int = 0
    lost_overlaps: int = 0
    peak: dict[str, int] = field(default_factory=dict)
    peak_total: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    driver_errors: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    unterminated: int = 0
    intervals: list[Interval] = field(default_factory=list)


def parse_events(text: str, worker_id: str, killed_at: int | None) -> tuple[list[Interval], dict]:
    """The intervals and counts of one events file; a hold cut by SIGKILL ends at ``killed_at``."""
    intervals: list[Interval] = []
    counts: dict[str, Any] = {"Q": 0, "T": 0, "errors": Counter(), "warnings": Counter()}
    open_hold: Interval | None = None
    last_closed: Interval | None = None
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].isdigit():
            continue  # a line cut short by SIGKILL
        ns, kind = int(parts[0]), parts[1]
        rest = parts[2] if len(parts) > 2 else ""
        if kind == "+":
            fields = rest.split()
            open_hold = Interval(ns, None, fields[0], fields[1], lost=False, worker=worker_id)
            intervals.append(open_hold)
        elif kind == "-" and open_hold is not None and rest.split()[:1] == [open_hold.key]:
            open_hold.end, last_closed, open_hold = ns, open_hold, None
        elif kind == "R" and last_closed is not None:
            fields = rest.split()
            last_closed.lost = len(fields) > 1 and fields[1] == "1"
            last_closed = None
        elif kind in ("Q", "T"):
            counts[kind] += 1
        elif kind in ("E", "X"):
            name = rest.split(" ", 1)[0]
            counts["errors"][f"{kind} {name}"] += 1
            if kind == "X" or "locked" in rest.lower():
                counts["errors"]["driver"] += 1
        elif kind == "W":
            counts["warnings"][_warning_kind(rest)] += 1
    if open_hold is not None and killed_at is not None:
        open_hold.end = killed_at
    return intervals, counts


def _warning_kind(message: str) -> str:
    for needle, name in (
        ("was lost", "lease lost (heartbeat)"),
        ("was reclaimed before its release", "lease lost (release)"),
        ("ticket had expired", "ticket expired, requeued"),
        ("deleted or replaced", "database file replaced"),
        ("heartbeat of", "heartbeat failed"),
        ("watch of", "watcher failed"),
        ("candidates exhausted", "all candidates full"),
    ):
        if needle in message:
            return name
    return "other: " + message[:60]


def observe(intervals: list[Interval], limits: dict[str, int], cap: int) -> Observation:
    """Sweep the holds in time order; count grants above a limit, lost holds aside."""
    result = Observation(intervals=intervals)
    events: list[tuple[int, int, Interval]] = []
    for hold in intervals:
        if hold.end is None:
            result.unterminated += 1
            continue
        events.append((hold.start, 1, hold))
        events.append((hold.end, -1, hold))
    # At equal times, exits first: a release and a grant in the same nanosecond do not overlap.
    events.sort(key=lambda e: (e[0], e[1]))
    honest: Counter[str] = Counter()
    everyone: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    for _, delta, hold in events:
        everyone[hold.key] += delta
        if not hold.lost:
            honest[hold.key] += delta
        if delta < 0:
            continue
        result.grants += 1
        result.lost += hold.lost
        total_honest = sum(honest.values())
        peak[hold.key] = max(peak[hold.key], honest[hold.key])
        result.peak_total = max(result.peak_total, total_honest)
        if honest[hold.key] > limits[hold.key] or total_honest > cap:
            result.violations += 1
        elif everyone[hold.key] > limits[hold.key] or sum(everyone.values()) > cap:
            result.lost_overlaps += 1
    result.peak = dict(peak)
    return result


# --- the supervisor --------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker slot: its current process and events file."""

    slot: int
    incarnation: int
    process: subprocess.Popen[bytes]
    events: Path
    stopped_until: float | None = None
    stopped_ns: int = 0
    protected_until: float = 0.0  # no SIGKILL until then: it must be able to learn it was lost
    killed_at: int | None = None


@dataclass
class Figures:
    """The soak's results."""

    seconds: float
    processes: int
    ttl: float
    grants: int = 0
    via: dict[str, int] = field(default_factory=dict)
    queue_waits: int = 0
    timeouts: int = 0
    kills: int = 0
    holder_kills: int = 0
    waiter_kills: int = 0
    stops: int = 0
    long_stops: int = 0
    restarts: int = 0
    recoveries: int = 0
    unrecovered: int = 0
    max_reclaim_ms: float = 0.0
    median_reclaim_ms: float = 0.0
    max_recovery_ms: float = 0.0
    p99_reclaim_ms: float = 0.0
    slow_reclaims: int = 0  # reclaims slower than 0.5 s
    slow_reclaims_during_a_stop: int = 0  # ... while some other worker was stopped
    lost_while_stopped: int = 0  # lost leases whose own holder was stopped during the hold
    lost: int = 0
    lost_overlaps: int = 0
    violations: int = 0
    peak: dict[str, int] = field(default_factory=dict)
    peak_total: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    driver_errors: int = 0
    warnings: dict[str, int] = field(default_factory=dict)
    unterminated: int = 0
    hung_workers: int = 0
    failed_workers: int = 0
    left_leases: int = 0
    left_tickets: int = 0
    left_by_live_or_clean: int = 0
    left_after_reap: int = 0


class Soak:
    """Runs the workers and the killer, then the observer."""

    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.args = args
        self.dir = directory
        self.db = directory / "limiter.db"
        self.config = directory / "config.toml"
        self.config.write_text(textwrap.dedent(CONFIG.format(cap=CAP, ttl=args.ttl)))
        self.stop_file = directory / "stop"
        self.rng = random.Random(args.seed)
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.figures = Figures(seconds=args.seconds, processes=args.processes, ttl=args.ttl)
        self.killed_pids: set[int] = set()
        # (pid, kill ns, model keys it held): watched until its leases are gone.
        self.pending: list[tuple[int, int, list[str]]] = []
        self.reclaims: list[tuple[int, int, list[str]]] = []  # (kill ns, reclaimed ns, keys)
        self.stop_windows: list[tuple[str, int, int]] = []  # (worker, SIGSTOP ns, SIGCONT ns)
        self.lock = threading.Lock()

    def start_worker(self, slot: int, incarnation: int) -> Worker:
        events = self.dir / f"events-{slot:02d}-{incarnation:04d}.txt"
        command = [sys.executable, __file__, "worker", "--db", str(self.db)]
        command += ["--config", str(self.config), "--events", str(events)]
        command += ["--stop", str(self.stop_file), "--seed", str(self.rng.randrange(2**32))]
        command += ["--hold-ms", str(self.args.hold_ms), "--pause-ms", str(self.args.pause_ms)]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        return Worker(slot, incarnation, process, events)

    def read(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            try:
                return conn.execute(query, params).fetchall()
            except sqlite3.OperationalError:
                return []  # the schema is not there yet

    def run(self) -> Figures:
        args = self.args
        # One process creates the database first, so that the workers' first opens are cheap.
        subprocess.run([sys.executable, "-c", _CREATE, str(self.db), str(self.config)], check=True)
        self.workers = [self.start_worker(slot, 0) for slot in range(args.processes)]
        monitor = threading.Thread(target=self.monitor, daemon=True)
        self.running = True
        monitor.start()
        deadline = time.monotonic() + args.seconds
        next_action = time.monotonic() + self.rng.expovariate(1 / args.action_every)
        try:
            while (now := time.monotonic()) < deadline:
                self.continue_due()
                if now >= next_action:
                    self.act()
                    next_action = now + self.rng.expovariate(1 / args.action_every)
                time.sleep(0.01)
            self.settle()
        finally:
            self.finish()
            self.running = False
            monitor.join(5)
        return self.report()

    def settle(self) -> None:
        """Time is up: no more kills or stops. The workers run on until every killed holder's
        lease is reclaimed (they keep needing every model), for at most ``SETTLE_TTLS`` TTLs;
        what is left then counts as unrecovered."""
        self.continue_due(everyone=True)
        deadline = time.monotonic() + SETTLE_TTLS * self.args.ttl
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return
            time.sleep(0.01)

    def by_pid(self) -> dict[int, Worker]:
        return {w.process.pid: w for w in self.workers if w.process.poll() is None}

    def act(self) -> None:
        """One random action on a random holder or waiter."""
        alive = self.by_pid()
        holding = {
            pid: keys
            for pid, keys in _group(self.read("SELECT pid, provider || '/' || model FROM leases"))
            if pid in alive
        }
        waiting = {pid for (pid,) in self.read("SELECT pid FROM waiters") if pid in alive}
        now = time.monotonic()
        choice = self.rng.random()
        if choice < 0.45:
            targets = [p for p in holding if self.killable(alive[p], now)]
            if targets:
                self.kill(alive[self.rng.choice(targets)], holding)
        elif choice < 0.6:
            targets = [p for p in waiting - set(holding) if self.killable(alive[p], now)]
            if targets:
                self.kill(alive[self.rng.choice(targets)], holding)
        else:
            targets = [p for p in set(holding) | waiting if alive[p].stopped_until is None]
            if targets:
                self.stop(alive[self.rng.choice(targets)], long=self.rng.random() < 0.15)

    def killable(self, worker: Worker, now: float) -> bool:
        return worker.stopped_until is None and now >= worker.protected_until

    def kill(self, worker: Worker, holding: dict[int, list[str]]) -> None:
        pid = worker.process.pid
        keys = holding.get(pid, [])
        worker.killed_at = time.monotonic_ns()
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        self.killed_pids.add(pid)
        self.figures.kills += 1
        if keys:
            self.figures.holder_kills += 1
            with self.lock:
                self.pending.append((pid, worker.killed_at, keys))
        else:
            self.figures.waiter_kills += 1
        self.retired.append(worker)
        replacement = self.start_worker(worker.slot, worker.incarnation + 1)
        self.workers[self.workers.index(worker)] = replacement
        self.figures.restarts += 1

    def stop(self, worker: Worker, *, long: bool) -> None:
        ttl = self.args.ttl
        # A long stop outlives the lease; every stop stays well inside the busy timeout (10 s).
        seconds = self.rng.uniform(ttl * 1.2, ttl * 1.8) if long else self.rng.uniform(0.05, 1.0)
        worker.stopped_ns = time.monotonic_ns()
        worker.process.send_signal(signal.SIGSTOP)
        worker.stopped_until = time.monotonic() + seconds
        self.figures.stops += 1
        self.figures.long_stops += long

    def continue_due(self, *, everyone: bool = False) -> None:
        now = time.monotonic()
        for worker in self.workers:
            due = worker.stopped_until
            if due is not None and (everyone or now >= due):
                worker.process.send_signal(signal.SIGCONT)
                self.stop_windows.append(
                    (f"{worker.slot}.{worker.incarnation}", worker.stopped_ns, time.monotonic_ns())
                )
                worker.stopped_until = None
                worker.protected_until = now + self.args.ttl + 2.0

    def monitor(self) -> None:
        """Note when each killed holder's leases are gone (reclaimed by some claim or sweep)."""
        while self.running:
            with self.lock:
                pending = list(self.pending)
            for entry in pending:
                pid, killed_at, keys = entry
                if not self.read("SELECT 1 FROM leases WHERE pid = ?", (pid,)):
                    with self.lock:
                        self.pending.remove(entry)
                        self.reclaims.append((killed_at, time.monotonic_ns(), keys))
            time.sleep(0.005)

    def finish(self) -> None:
        """Stop every worker cleanly, then account for what is left in the database."""
        self.continue_due(everyone=True)
        self.stop_file.touch()
        for worker in self.workers:
            try:
                code = worker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.figures.hung_workers += 1
                worker.process.kill()
                worker.process.wait()
                self.killed_pids.add(worker.process.pid)
                worker.killed_at = time.monotonic_ns()
                continue
            self.figures.failed_workers += code != 0
        time.sleep(0.05)  # let the monitor see the last reclaims
        leases = self.read("SELECT pid FROM leases")
        tickets = self.read("SELECT pid FROM waiters")
        self.figures.left_leases, self.figures.left_tickets = len(leases), len(tickets)
        self.figures.left_by_live_or_clean = sum(
            pid not in self.killed_pids for (pid,) in leases + tickets
        )
        subprocess.run([sys.executable, "-c", _REAP, str(self.db), str(self.config)], check=True)
        self.figures.left_after_reap = len(
            self.read("SELECT 1 FROM leases UNION ALL SELECT 1 FROM waiters")
        )

    def report(self) -> Figures:
        f = self.figures
        intervals: list[Interval] = []
        totals: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        warnings: Counter[str] = Counter()
        for worker in self.retired + self.workers:
            text = worker.events.read_text() if worker.events.exists() else ""
            worker_id = f"{worker.slot}.{worker.incarnation}"
            held, counts = parse_events(text, worker_id, worker.killed_at)
            intervals += held
            totals["Q"] += counts["Q"]
            totals["T"] += counts["T"]
            errors += counts["errors"]
            warnings += counts["warnings"]
        seen = observe(intervals, MODELS, CAP)
        f.grants, f.via = seen.grants, dict(Counter(hold.via for hold in intervals))
        f.queue_waits, f.timeouts = totals["Q"], totals["T"]
        f.lost, f.lost_overlaps, f.violations = seen.lost, seen.lost_overlaps, seen.violations
        f.peak, f.peak_total, f.unterminated = seen.peak, seen.peak_total, seen.unterminated
        f.driver_errors = errors.pop("driver", 0)
        f.errors, f.warnings = dict(errors), dict(warnings)
        reclaim_ms = sorted((done - killed) / 1e6 for killed, done, _ in self.reclaims)
        f.recoveries, f.unrecovered = len(self.reclaims), len(self.pending)
        if reclaim_ms:
            f.max_reclaim_ms = round(reclaim_ms[-1], 1)
            f.median_reclaim_ms = round(reclaim_ms[len(reclaim_ms) // 2], 1)
            f.p99_reclaim_ms = round(reclaim_ms[int(len(reclaim_ms) * 0.99)], 1)
        for killed, done, _ in self.reclaims:
            if done - killed > 500_000_000:
                f.slow_reclaims += 1
                f.slow_reclaims_during_a_stop += any(
                    start < done and end > killed for _, start, end in self.stop_windows
                )
        for hold in intervals:
            if hold.lost and hold.end is not None:
                f.lost_while_stopped += any(
                    who == hold.worker and start < hold.end and end > hold.start
                    for who, start, end in self.stop_windows
                )
        starts = sorted((h.start, h.key) for h in intervals)
        recovery = []
        for _killed, done, keys in self.reclaims:
            # The first grant of a model the dead holder held, once its lease was reclaimed
            # (the monitor sees the reclaim up to its 5 ms poll late, hence the margin).
            after = [s for s, key in starts if key in keys and s >= done - 10_000_000]
            if after:
                recovery.append((after[0] - _killed) / 1e6)
        f.max_recovery_ms = round(max(recovery, default=0.0), 1)
        return f


def _group(rows: list[tuple[Any, ...]]) -> list[tuple[int, list[str]]]:
    grouped: dict[int, list[str]] = {}
    for pid, key in rows:
        grouped.setdefault(pid, []).append(key)
    return list(grouped.items())


_CREATE = (
    "import sys; from collet_limiter import Limiter, load_config; "
    "Limiter(sys.argv[1], config=load_config(sys.argv[2])).close()"
)
_REAP = (
    "import sys; from collet_limiter import Limiter, load_config; "
    "l = Limiter(sys.argv[1], config=load_config(sys.argv[2])); l.reap(); l.close()"
)


def print_report(f: Figures) -> None:
    print(
        f"soak: {f.seconds:g} s, {f.processes} workers, models {MODELS}, cap {CAP}, TTL {f.ttl:g} s"
    )
    print(
        f"operations:  {f.grants} grants {f.via}, {f.queue_waits} QueueWait, {f.timeouts} timeouts"
    )
    print(
        f"kills:       {f.kills} SIGKILL ({f.holder_kills} holders, {f.waiter_kills} waiters), "
        f"{f.restarts} restarts"
    )
    print(f"stops:       {f.stops} SIGSTOP/SIGCONT ({f.long_stops} longer than the TTL)")
    print(
        f"recoveries:  {f.recoveries} of {f.holder_kills} killed holders' leases reclaimed "
        f"({f.unrecovered} not reclaimed by the end); reclaim median {f.median_reclaim_ms} ms, "
        f"p99 {f.p99_reclaim_ms} ms, max {f.max_reclaim_ms} ms; {f.slow_reclaims} took over "
        f"0.5 s, {f.slow_reclaims_during_a_stop} of them while a worker was stopped"
    )
    print(f"max recovery latency: {f.max_recovery_ms} ms (SIGKILL to the model's next grant)")
    print(
        f"lost:        {f.lost} leases reclaimed from stalled holders, each reported by "
        f"lease.lost ({f.lost_while_stopped} of them were stopped themselves during the hold)"
    )
    print(f"             {f.lost_overlaps} grants overlapped a lost lease's holder")
    print(f"violations:  {f.violations}  (peaks {f.peak}, total {f.peak_total})")
    print(f"errors:      {f.errors or 'none'}; driver errors {f.driver_errors}")
    print(f"warnings:    {f.warnings or 'none'}")
    print(
        f"end:         {f.left_leases} leases and {f.left_tickets} tickets left, all of killed "
        f"processes ({f.left_by_live_or_clean} otherwise); {f.left_after_reap} after one reap; "
        f"{f.hung_workers} hung, {f.failed_workers} failed workers, "
        f"{f.unterminated} unterminated holds"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="soak", choices=["soak", "worker"])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--ttl", type=float, default=3.0, help="lease TTL in seconds")
    parser.add_argument("--action-every", type=float, default=0.4, help="mean seconds")
    parser.add_argument("--hold-ms", type=float, default=60.0)
    parser.add_argument("--pause-ms", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="keep the database and events files here")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--db")
    parser.add_argument("--config")
    parser.add_argument("--events")
    parser.add_argument("--stop")
    args = parser.parse_args()
    if args.command == "worker":
        return worker(args)
    if args.dir:
        directory = Path(args.dir)
        directory.mkdir(parents=True, exist_ok=True)
        figures = Soak(args, directory).run()
    else:
        with tempfile.TemporaryDirectory(prefix="collet-soak-") as name:
            figures = Soak(args, Path(name)).run()
    print_report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(figures), indent=2))
    clean = (
        figures.violations == 0
        and figures.driver_errors == 0
        and not figures.errors
        and figures.left_after_reap == 0
        and figures.left_by_live_or_clean == 0
        and figures.hung_workers == 0
        and figures.failed_workers == 0
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
