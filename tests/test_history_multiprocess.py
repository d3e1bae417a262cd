"""The history a real multi-process run writes, held against what its workers saw themselves.

Worker processes (``history_workers.py``) churn on one model of limit 2 with a chain model of
limit 2, by every way of acquiring, with random holds and random short timeouts; one holder is
SIGKILLed while it holds, another stops itself (SIGSTOP) past its 1 s lease TTL and is continued
once its lease was reclaimed, and a third keeps the primary full for a while (long waits). Each worker writes down its own acquisitions (lease id, key, via,
CLOCK_MONOTONIC before its call and after its return), timeouts and releases. The test then reads
``events`` and ``lease_history`` with the database's own driver and checks that they tell the
same story, and the observer (``observer.py``) that the limits held. Every child is reaped and
every wait has a deadline.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import Limiter, load_config

from .cli_helpers import wait_until
from .flocks import flock_waiters
from .observer import observe_files
from .sql import rows
from .test_faults import _blocked_inside_renew, write_config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .conftest import FakeClock

WORKER = str(Path(__file__).with_name("history_workers.py"))
TIMEOUT = 60

PRIMARY, CHAIN = "zai/glm-4.7", "zai/glm-4.7-flash"
LIMITS = {PRIMARY: 2, CHAIN: 2}
MODELS = """
[collaboration]
max_agents = 10

[[models]]
name = "glm-4.7"
concurrency_limit = 2

[[models]]
name = "glm-4.7-flash"
concurrency_limit = 2

[[providers]]
name = "zai"
models = ["glm-4.7", "glm-4.7-flash"]
"""
# The holder that stops itself has a lease TTL of 1 s. Everyone else has 600 s, so that no
# heartbeat renews during a run (a renewal racing a release once wrote a false `lost` event: the
# test at the end covers that race on its own). The [limiter] section
# is not part of what a config writes to the database, so the two configs agree on the limits.
SHORT_TTL_SECS = 1.0
LONG_TTL_SECS = 600.0
TTL = "\n[limiter]\nlease_ttl_secs = {}\n"

# How much longer a worker may measure an acquire than the wait its lease records, per backend.
#
# The worker measures from before its call to after its return; the history's wait runs from
# the first claim's transaction time (``requested_ts``) to the granting one's (``acquired_ts``),
# both inside that interval. The difference is the call's way in (waiting for the writer lock
# behind the other processes' transactions) and, for a grant made by another process's
# release, its way out: the rest of that transaction, its commit, the wake-up of the waiter's
# watcher thread, one read, the return (a missed wake-up is caught by the next poll, at most
# 50 ms later: see history_workers._limiter). A few ms on an idle machine; but this one has 2
# cores shared with other jobs, and measured over 4 runs per backend at load 8 to 11, SQLite
# gave a median of 4-6 ms and at most 153 ms, PostgreSQL (each transaction a round trip to
# server processes on the same cores, wake-ups by LISTEN/NOTIFY) a median of 25-33 ms and at
# most 238 ms. Hence bounds of hundreds of ms, not tens. What they still catch: a wait counted
# from too early (an earlier ticket's, one including the hold) goes below zero, which only
# rounding may do, so that half of the check is exact; and a wait counted short by more than
# the bound falls outside it, which the gate (GATE_SECS) makes sure happens to a queued grant
# recorded as no wait (the test requires two waits of more than 1.5 times the bound). A wait
# counted short by less than the bound (from a ticket queued a few holds later) can pass.
SLACK_MS = {"sqlite": 300.0, "postgresql": 500.0}
# How long the primary stays full once the churners queue for it (see run_scenario).
GATE_SECS = 1.0
# Below zero only by the rounding of epoch seconds as doubles (2.4e-7 s at today's dates) and
# PostgreSQL's microsecond timestamps.
ROUNDING_MS = 0.01

# The heartbeat of the holder that stops itself renews first one TTL/3 after its thread
# started, which is after the holder asked for its lease. Stopped before that, with this margin
# for the stop to reach every thread, the holder cannot be stopped inside a write transaction
# (holding the writer lock, which would stall everyone else).
STOP_MARGIN_SECS = 0.05
STOP_ATTEMPTS = 3


class Child:
    """A worker process whose stdout is read line by line with a deadline."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def expect(self, prefix: str, timeout: float = TIMEOUT) -> list[str]:
        """The next line's words; fails unless it starts with ``prefix`` within ``timeout``."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([stdout], [], [], max(0.0, left))
            chunk = os.read(stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.process.kill()
                _, err = self.process.communicate(timeout=TIMEOUT)
                pytest.fail(f"expected {prefix!r} from pid {self.pid}; stderr: {err.decode()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        words = line.decode().split()
        assert words[:1] == [prefix], (prefix, words)
        return words

    def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def finish(self) -> str:
        """Wait for a clean exit; returns stderr."""
        _, err = self.process.communicate(timeout=TIMEOUT * 2)
        assert self.process.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
        return err.decode()

    def reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL ends a stopped process too
        self.process.wait(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """The test's worker processes, killed if still running and reaped at the end."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.reap()


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (state T in ``/proc``)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        states.append(stat.rsplit(")", 1)[1].split()[0])
    return all(state in "Tt" for state in states)


@dataclass
class Run:
    """What one scenario left: the workers' records, the history, and the special leases."""

    records: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    killed: int = 0
    lost: int = 0
    observer_files: list[Path] = field(default_factory=list)


def table(database: Path | str, query: str, names: str) -> list[dict[str, Any]]:
    return [dict(zip(names.split(), row, strict=True)) for row in rows(database, query)]


def values(database: Path | str, query: str) -> list[tuple[Any, ...]]:
    """``rows``, typed for comparing its values."""
    return rows(database, query)


def run_scenario(
    database: Path | str, tmp_path: Path, children: list[Child], *, workers: int, count: int
) -> Run:
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(MODELS) + TTL.format(LONG_TTL_SECS))
    short = tmp_path / "short-ttl.toml"
    short.write_text(textwrap.dedent(MODELS) + TTL.format(SHORT_TTL_SECS))
    go = tmp_path / "go"
    run = Run()

    def start(name: str, command: str, *args: str, config: Path = config) -> Child:
        records, events = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.events"
        run.observer_files.append(events)
        child = Child(
            command, "--db", str(database), "--config", str(config), "--name", name,
            "--records", str(records), "--events", str(events), *args,
        )  # fmt: skip
        children.append(child)
        return child

    # 0. The churners open their limiters, acquire once each (see history_workers.churn), and
    #    wait for the go while the test sets the stage.
    churners = [
        start(f"w{index}", "churn", "--primary", PRIMARY, "--chain", CHAIN,
              "--count", str(count), "--seed", str(index), "--go", str(go))
        for index in range(workers)
    ]  # fmt: skip
    for churner in churners:
        churner.expect("READY")

    # 1. A holder of the chain model stops itself (retried in the rare case where it stopped
    #    too late to be sure its heartbeat was not writing: see STOP_MARGIN_SECS).
    for attempt in range(STOP_ATTEMPTS):
        sleeper = start(f"stopped{attempt}", "hold", "--primary", CHAIN, "--count", "1",
                        "--then", "stop", config=short)  # fmt: skip
        _, first, lease_id = sleeper.expect("HELD")
        _, stopping = sleeper.expect("STOPPING")
        wait_until(functools.partial(stopped, sleeper.pid), timeout=TIMEOUT, what="the stop")
        if int(stopping) - int(first) < (SHORT_TTL_SECS / 3 - STOP_MARGIN_SECS) * 1e9:
            run.lost = int(lease_id)
            break
        sleeper.process.send_signal(signal.SIGCONT)
        sleeper.tell("release")
        assert sleeper.expect("RELEASED") == ["RELEASED", "0"]
        sleeper.finish()
    else:
        pytest.fail(f"the holder stopped too late to be sure of its heartbeat {STOP_ATTEMPTS}x")

    # 2. Another holder of the chain model is SIGKILLed. Its use of the slot ends by its
    #    death, so the test writes its observer exit once it is reaped.
    victim = start("killed", "hold", "--primary", CHAIN, "--count", "1")
    run.killed = int(victim.expect("HELD")[2])
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(TIMEOUT)
    death = tmp_path / "killed-death.events"
    death.write_text(f"{time.monotonic_ns()} - {CHAIN} primary\n")
    run.observer_files.append(death)

    # 3. A third holder, the gate, takes both slots of the primary.
    gate = start("gate", "hold", "--primary", PRIMARY, "--count", "2")
    gate.expect("HELD")

    # 4. The churners go once the stopped holder's lease has expired (so that no waiter's
    #    expiry timer fires in the middle). Their claims reclaim the chain model's two slots;
    #    they fall back, time out, and queue for the primary. Once they have queued, the gate
    #    holds the primary GATE_SECS more (a deliberate wait: the waits it makes give the check
    #    of the recorded waits its teeth), then releases it, which hands its slots to the two
    #    oldest waiters.
    expiry = f"select expires_ts from leases where id = {run.lost}"
    wait_until(
        lambda: all(ts < time.time() for (ts,) in values(database, expiry)),
        timeout=TIMEOUT,
        what="the stopped holder's lease to expire",
    )
    go.touch()
    queued = f"select count(*) from waiters where model = '{PRIMARY.split('/')[1]}'"
    wait_until(lambda: values(database, queued)[0][0] >= 3, timeout=TIMEOUT, what="a queue")
    time.sleep(GATE_SECS)
    gate.tell("release")
    gate.finish()
    for churner in churners:
        churner.finish()

    # 5. Whatever has not reclaimed the stopped holder's lease (the churners' claims did,
    #    surely), a reap does; then the holder is continued and must find its lease lost.
    with Limiter(database, config=load_config(config)) as limiter:
        limiter.reap()
    assert rows(database, f"select count(*) from leases where id = {run.lost}") == [(0,)]
    sleeper.process.send_signal(signal.SIGCONT)
    sleeper.tell("lose")
    assert sleeper.expect("RELEASED") == ["RELEASED", "1"]
    sleeper.finish()

    for path in sorted(tmp_path.glob("*.jsonl")):
        run.records += [json.loads(line) for line in path.read_text().splitlines()]
    run.events = table(
        database,
        "select kind, provider || '/' || model, primary_provider || '/' || primary_model, via,"
        " lease_id, holder, waited_ms, reason from events order by id",
        "kind key primary via lease_id holder waited_ms reason",
    )
    run.history = table(
        database,
        "select lease_id, provider || '/' || model, via, holder, waited_ms, acquired_ts,"
        " ended_ts, ended, reason from lease_history",
        "lease_id key via holder waited_ms acquired_ts ended_ts ended reason",
    )
    return run


def peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at once (an end before a start at the same instant)."""
    points = [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    held = highest = 0
    for _, delta in sorted(points):
        held += delta
        highest = max(highest, held)
    return highest


def check(run: Run, slack_ms: float) -> None:
    acquired = [r for r in run.records if r["outcome"] == "acquired"]
    timeouts = [r for r in run.records if r["outcome"] == "timeout"]
    busy = [r for r in run.records if r["outcome"] == "busy"]
    releases = {r["lease_id"]: r for r in run.records if r["outcome"] == "released"}
    by_kind: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in run.events:
        by_kind[event["kind"]].append(event)

    # Nothing is left held or queued, and every lease the workers got ended in the history
    # exactly once, as what it was (key, via, holder), by release or reclaim; the discarded
    # ones (granted as their waiter timed out) are leases no worker ever saw.
    assert [h for h in run.history if h["ended"] is None] == []
    ended = [h for h in run.history if h["ended"] in ("released", "reclaimed")]
    assert Counter((h["key"], h["via"]) for h in ended) == Counter(
        (r["key"], r["via"]) for r in acquired
    )
    assert sorted((h["lease_id"], h["key"], h["via"], h["holder"]) for h in ended) == sorted(
        (r["lease_id"], r["key"], r["via"], r["label"]) for r in acquired
    )
    reclaimed = {h["lease_id"]: h["reason"] for h in ended if h["ended"] == "reclaimed"}
    assert reclaimed == {run.killed: "holder dead", run.lost: "expired"}
    assert set(releases) == {r["lease_id"] for r in acquired} - {run.killed}

    # Each lease's recorded wait lies inside the worker's own measurement, by at most slack_ms.
    history = {h["lease_id"]: h for h in ended}
    slack = {}
    for record in acquired:
        measured_ms = (record["returned_ns"] - record["asked_ns"]) / 1e6
        slack[record["label"]] = measured_ms - history[record["lease_id"]]["waited_ms"]
    outside = {label: s for label, s in slack.items() if not -ROUNDING_MS <= s <= slack_ms}
    assert outside == {}, f"measured minus recorded wait (ms) outside [0, {slack_ms}]"
    long_waits = [h for h in ended if h["waited_ms"] > 1.5 * slack_ms]
    assert len(long_waits) >= 2, "the gate should make long waits (see GATE_SECS)"

    # Fallbacks: one fell_back event per lease granted on another model than asked, by via.
    fell_back = {e["lease_id"]: (e["via"], e["key"], e["primary"]) for e in by_kind["fell_back"]}
    assert len(fell_back) == len(by_kind["fell_back"])
    assert fell_back == {
        r["lease_id"]: (r["via"], r["key"], r["primary"])
        for r in acquired
        if r["via"] not in ("primary", "queue")
    }
    assert Counter(v for v, _, _ in fell_back.values()) == Counter(
        r["via"] for r in acquired if r["via"] not in ("primary", "queue")
    )
    # Every grant from the queue had been queued.
    queued = {e["holder"] for e in by_kind["queued"]}
    assert {r["label"] for r in acquired if r["via"] == "queue"} <= queued

    # Timeouts: one timed_out event per AcquireTimeout a worker got, on the model it asked
    # for; a lease granted to one as it gave up was discarded, never delivered.
    assert sorted((e["holder"], e["key"]) for e in by_kind["timed_out"]) == sorted(
        (r["label"], r["primary"]) for r in timeouts
    )
    timed_out = {r["label"]: r for r in timeouts}
    assert {h["holder"] for h in run.history if h["ended"] == "discarded"} <= set(timed_out)
    # How long a timed-out acquire waited (when known) lies inside what its worker measured.
    for event in by_kind["timed_out"]:
        record = timed_out[event["holder"]]
        if event["waited_ms"] is not None:
            measured_ms = (record["returned_ns"] - record["asked_ns"]) / 1e6
            assert -ROUNDING_MS <= measured_ms - event["waited_ms"] <= slack_ms, (event, record)
    # A non-blocking attempt that found no room wrote nothing.
    assert {r["label"] for r in busy}.isdisjoint(e["holder"] for e in run.events)

    # The killed holder's lease: reclaimed once, as dead; the stopped one's: reclaimed once as
    # expired, and lost once, which its holder found too. No other lease was lost.
    for lease_id in (run.killed, run.lost):
        kinds = Counter(e["kind"] for e in run.events if e["lease_id"] == lease_id)
        expected = {"reclaimed": 1} if lease_id == run.killed else {"reclaimed": 1, "lost": 1}
        assert kinds == expected, (lease_id, kinds)
    assert [e["lease_id"] for e in by_kind["lost"]] == [run.lost]
    assert {i for i, r in releases.items() if r["lost"]} == {run.lost}

    # The limits held, by the observer and by the history's own intervals.
    seen = observe_files(run.observer_files)
    assert seen.enters == seen.exits == len(acquired)
    assert seen.via == Counter(h["via"] for h in ended)
    for key, limit in LIMITS.items():
        intervals = [(h["acquired_ts"], h["ended_ts"]) for h in run.history if h["key"] == key]
        assert 1 <= seen.peak[key] <= limit, (key, seen.peak)
        assert peak(intervals) <= limit, (key, peak(intervals))
    assert seen.peak[PRIMARY] == 2, "the primary should have been full"

    # The run exercised what it checks.
    assert timeouts and busy and by_kind["fell_back"]
    assert {"primary", "queue"} <= {r["via"] for r in acquired}


@pytest.mark.parametrize(
    ("workers", "count"),
    [(6, 20), pytest.param(8, 120, marks=pytest.mark.slow)],
    ids=["ci", "long"],
)
def test_the_history_of_a_multiprocess_run_matches_what_its_workers_saw(
    database: Path | str, tmp_path: Path, children: list[Child], workers: int, count: int
) -> None:
    run = run_scenario(database, tmp_path, children, workers=workers, count=count)
    check(run, SLACK_MS["sqlite" if isinstance(database, Path) else "postgresql"])


# --- a renewal racing a release ---------------------------------------------------------------


@pytest.mark.parametrize("reclaimed", [False, True], ids=["released", "reclaimed"])
def test_a_renewal_racing_a_release_records_a_lease_lost_only_if_it_was_and_once(
    tmp_path: Path, clock: FakeClock, reclaimed: bool
) -> None:
    """The holder's release and its heartbeat's renewal at once (the interleaving of
    test_faults' renewal-racing-a-release test, forced through the writer lock): the renewal
    lists the lease, then waits behind the release. A lease released cleanly was not lost; a
    reclaimed one was lost once, whichever of the two finds it.

    The scenario above avoids this race on purpose (its stopped holder waits for its heartbeat
    to find the lease lost before it releases), so that its `lost` count is exact.
    """
    db = tmp_path / "limiter.db"
    config = load_config(write_config(tmp_path / "config.toml", MODELS))
    with (
        Limiter(db, config=config, clock=clock, lease_ttl=10) as limiter,
        Limiter(db, config=config, clock=clock) as other,
    ):
        lease = limiter.acquire(PRIMARY)
        if reclaimed:
            clock.advance(11)
            assert [r.reason for r in other.reap()] == ["expired"]
        lock_path = Path(f"{db}.lock")
        lock = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            release = threading.Thread(target=lease.release)
            release.start()
            wait_until(
                lambda: flock_waiters(lock_path) == [os.getpid()],
                what="the release to wait for the writer lock",
            )
            renewal = threading.Thread(target=limiter.renew)
            renewal.start()
            wait_until(lambda: _blocked_inside_renew(renewal), what="the renewal to wait")
        finally:
            os.close(lock)  # the release writes, then the renewal
        release.join(TIMEOUT)
        renewal.join(TIMEOUT)
        assert not release.is_alive() and not renewal.is_alive()
        assert lease.lost is reclaimed
    lost = rows(db, f"select count(*) from events where kind = 'lost' and lease_id = {lease.id}")
    assert lost == [(int(reclaimed),)]
