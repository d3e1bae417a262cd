"""Benchmark collet-limiter against its peers, side by side in one run; prints a markdown table.

    python benchmarks/bench.py            # the full run (about 18 minutes on 2 cores)
    python benchmarks/bench.py --quick    # about 5 minutes: shorter, 16 processes x 1 ms only
    python benchmarks/bench.py --only "collet-limiter (sync)" --only "sqlite3, 5 ms poll"
    python benchmarks/bench.py --quick --only "collet-limiter (sync)" \
        --only "collet-limiter (sync, no history)"   # what writing the history costs
    python benchmarks/bench.py --backends postgresql   # PostgreSQL only (about 8 minutes)
    python benchmarks/bench.py --backends sqlite,peers # the run before PostgreSQL (10 minutes)

Workloads (limit 3 unless said), each on fresh shared state, every worker a separate process:

- uncontended: one process, acquire+release cycles per second;
- handoff: limit 1; a holder releases while another process is blocked in acquire; the time from
  just before the release call to the waiter's acquire returning, over many handoffs (p50/p99);
- idle CPU: the slots are held and 8 (then 200: 8 processes x 25 threads or tasks) waiters block;
  their CPU time over a window, from /proc, as a share of one core;
- contention: 2, 4 and 16 processes loop acquire, hold (0 or 1 ms), release; throughput, share
  of the ideal rate (limit / mean hold), Jain fairness over per-process counts, acquire p99, and
  an over-admission check by an observer that merges every process's own enter/exit records;
- on PostgreSQL, the handoff again with polling only: both processes' LISTEN connections made
  impossible (``mechanisms.refuse_listen``), at the default poll interval and at 5 ms.

collet-limiter runs on a SQLite file (the rows without a backend in their name) and on a
PostgreSQL server this script starts in a temporary directory and stops at the end (``initdb``
and ``pg_ctl`` as in the tests: ``tests/pgserver.py``), reached over its Unix socket, with the
server's default durability (fsync and synchronous_commit on; collet-limiter's own sessions
set synchronous_commit off, as its SQLite files run with synchronous=NORMAL; the psycopg peer
keeps the default). ``--backends`` picks among sqlite, postgresql and peers.

The peers' client libraries are the project's ``bench`` extra (``pip install -e '.[bench]'``);
a peer whose library is missing is skipped. Redis runs as a ``redis-server`` this script starts
on loopback (skipped if not installed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mechanisms import (
    MECHANISMS,
    NEEDS,
    OPTIONAL,
    POSTGRES,
    POSTGRES_PEERS,
    ColletAsync,
    ColletSync,
    backend,
    cleanup,
    prepare,
    refuse_listen,
)

TICK = os.sysconf("SC_CLK_TCK")
LIMIT = 3  # every workload but the handoff (limit 1)
BACKENDS = ("sqlite", "postgresql", "peers")
FAST_POLL = 0.005  # s: the polling-only handoff's second poll interval, the peers' 5 ms


# --- worker side ---------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    params = json.loads(args.params)
    mechanism = MECHANISMS[args.mech]
    if params.get("listen") is False:
        refuse_listen()
    go = Path(args.go) if args.go else None
    if args.role == "idle":
        idle_worker(args, params)
        return
    slot = mechanism(params)
    print("ready", flush=True)
    while go is not None and not go.exists():
        time.sleep(0.001)
    if args.role == "cycles":
        count, deadline = 0, time.perf_counter() + args.seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            slot.acquire()
            slot.release()
            count += 1
        print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)
    elif args.role == "churn":
        churn_worker(args, slot)
    elif args.role == "handoff":
        handoff_worker(slot)
    slot.close()


def churn_worker(args: argparse.Namespace, slot: Any) -> None:
    waits, holds, count = [], [], 0
    deadline = time.perf_counter() + args.seconds
    with open(args.events, "w", buffering=1 << 16) as events:
        while time.perf_counter() < deadline:
            asked = time.perf_counter()
            slot.acquire()
            entered = time.monotonic_ns()
            waits.append(time.perf_counter() - asked)
            if args.hold_ms:
                time.sleep(args.hold_ms / 1000)
            left = time.monotonic_ns()
            slot.release()
            holds.append((left - entered) / 1e9)
            events.write(f"{entered} +\n{left} -\n")
            count += 1
    waits.sort()
    print(
        json.dumps(
            {
                "count": count,
                "wait_p99": waits[int(len(waits) * 0.99)] if waits else 0.0,
                "hold_mean": statistics.fmean(holds) if holds else 0.0,
            }
        ),
        flush=True,
    )


def handoff_worker(slot: Any) -> None:
    """Obey the runner line by line: acquire, release (timed just before), quit."""
    for line in sys.stdin:
        command = line.strip()
        if command == "acquire":
            slot.acquire()
            print(f"got {time.monotonic_ns()}", flush=True)
        elif command == "release":
            before = time.monotonic_ns()
            slot.release()
            print(f"released {before}", flush=True)
        elif command == "quit":
            return


def idle_worker(args: argparse.Namespace, params: dict[str, Any]) -> None:
    """Block ``threads`` waiters in acquire until killed; say "ready" once they all wait."""
    face = MECHANISMS[args.mech]
    if face is ColletAsync:
        import asyncio

        from collet_limiter import AsyncLimiter, Config

        config = Config.model_validate(
            {"collaboration": {"max_agents": 64}, "models": [{"name": "m", "concurrency_limit": 3}]}
        )

        async def main() -> None:
            async with AsyncLimiter(params["db"], config=config) as limiter:
                tasks = [
                    asyncio.ensure_future(limiter.acquire_wait("bench/m"))
                    for _ in range(args.threads)
                ]
                while len(await limiter.waiters()) < args.threads * args.processes:
                    await asyncio.sleep(0.05)
                print("ready", flush=True)
                await asyncio.gather(*tasks)

        asyncio.run(main())
        return
    if face is ColletSync:
        shared = face(params)
        slots = [shared] * args.threads
    else:
        slots = [MECHANISMS[args.mech](params) for _ in range(args.threads)]
    threads = [threading.Thread(target=slot.acquire, daemon=True) for slot in slots]
    for thread in threads:
        thread.start()
    if face is ColletSync:
        while len(shared.limiter.waiters()) < args.threads * args.processes:
            time.sleep(0.05)
    else:
        time.sleep(1.0)  # the peers keep no queue to look at: give the threads time to block
    print("ready", flush=True)
    for thread in threads:
        thread.join()


# --- runner side ---------------------------------------------------------------------------------


class Runner:
    def __init__(self, workdir: Path, redis_port: int | None, pg: Any = None) -> None:
        self.workdir, self.redis_port, self.pg = workdir, redis_port, pg

    def spawn(
        self, mech: str, params: dict[str, Any], role: str, *extra: str
    ) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            __file__,
            "--worker",
            role,
            "--mech",
            mech,
            "--params",
            json.dumps(params),
            *extra,
        ]
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def fresh(self, mech: str, limit: int = LIMIT) -> dict[str, Any]:
        return prepare(mech, self.workdir, limit, self.redis_port, self.pg)

    def uncontended(self, mech: str, seconds: float) -> float:
        params = self.fresh(mech)
        child = self.spawn(mech, params, "cycles", "--seconds", str(seconds))
        out, _ = child.communicate(timeout=seconds + 120)
        cleanup(mech, params, self.pg)
        return float(json.loads(out.splitlines()[-1])["rate"])

    def handoff(self, mech: str, rounds: int, **overrides: Any) -> tuple[float, float]:
        """p50 and p99 of the handoff; ``overrides`` go to the workers' params (``listen``:
        False refuses the LISTEN connection, ``poll_interval``: the limiter's, in seconds)."""
        params = self.fresh(mech, limit=1)
        params.update(overrides)
        holder, waiter = self.spawn(mech, params, "handoff"), self.spawn(mech, params, "handoff")
        samples = []
        try:
            for child in (holder, waiter):
                if read(child) != "ready":
                    raise RuntimeError(f"worker {child.pid} did not start")
            for _ in range(rounds):
                send(holder, "acquire")
                read(holder)
                send(waiter, "acquire")
                time.sleep(0.02)  # the waiter is blocked in acquire by now
                send(holder, "release")
                released = int(read(holder).split()[1])
                got = int(read(waiter).split()[1])
                samples.append((got - released) / 1e9)
                send(waiter, "release")
                read(waiter)
            for child in (holder, waiter):
                send(child, "quit")
                child.wait(60)
        finally:
            for child in (holder, waiter):
                if child.poll() is None:
                    child.kill()
                    child.wait()
            cleanup(mech, params, self.pg)
        samples.sort()
        return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]

    def idle_cpu(self, mech: str, processes: int, threads: int, seconds: float) -> float:
        params = self.fresh(mech)
        holders = [self.spawn(mech, params, "handoff") for _ in range(3)]
        for child in holders:
            read(child)
            send(child, "acquire")
            read(child)
        waiters = [
            self.spawn(
                mech, params, "idle", "--threads", str(threads), "--processes", str(processes)
            )
            for _ in range(processes)
        ]
        try:
            for child in waiters:
                read(child)  # every waiter of every process is queued (start-up CPU is over)
            time.sleep(1.0)
            before = sum(cpu_seconds(child.pid) for child in waiters)
            time.sleep(seconds)
            after = sum(cpu_seconds(child.pid) for child in waiters)
        finally:
            for child in [*waiters, *holders]:
                child.kill()
                child.wait()
            cleanup(mech, params, self.pg)
        return (after - before) / seconds

    def contention(
        self, mech: str, processes: int, hold_ms: float, seconds: float
    ) -> dict[str, float]:
        params = self.fresh(mech)
        go = self.workdir / f"go-{time.monotonic_ns()}"
        files = [self.workdir / f"events-{time.monotonic_ns()}-{i}" for i in range(processes)]
        children = [
            self.spawn(
                mech,
                params,
                "churn",
                "--seconds",
                str(seconds),
                "--hold-ms",
                str(hold_ms),
                "--events",
                str(path),
                "--go",
                str(go),
            )
            for path in files
        ]
        try:
            for child in children:
                read(child)
            go.touch()
            results = []
            for child in children:
                out, _ = child.communicate(timeout=seconds + 300)
                results.append(json.loads(out.splitlines()[-1]))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            cleanup(mech, params, self.pg)
        counts = [r["count"] for r in results]
        total = sum(counts)
        hold = statistics.fmean(r["hold_mean"] for r in results) if hold_ms else 0.0
        ideal = LIMIT / hold if hold else float("nan")
        peak = observe_peak(files)
        for path in files:
            path.unlink()
        return {
            "rate": total / seconds,
            "share": (total / seconds) / ideal if hold else float("nan"),
            "jain": total**2 / (len(counts) * sum(c * c for c in counts)) if total else 0.0,
            "p99": max(r["wait_p99"] for r in results),
            "peak": peak,
        }


def send(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()


def read(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {child.pid} exited early ({child.wait()})")
    return line.strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def observe_peak(files: list[Path]) -> int:
    """The most holders at once, from every process's own records (not the mechanism's count)."""
    events = []
    for path in files:
        for line in path.read_text().splitlines():
            stamp, sign = line.split()
            events.append((int(stamp), 1 if sign == "+" else -1))
    events.sort(key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def redis_server(workdir: Path) -> Any:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


@contextlib.contextmanager
def postgres_server() -> Any:
    """A started PostgreSQL server with default durability and the lazy-commit role, stopped
    on the way out whatever happens; None when PostgreSQL is not installed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pgserver import PgServer, find_bin

    if find_bin() is None:
        yield None
        return
    # Not in the benchmark's own temporary directory: as root, the server runs as the postgres
    # user, who could not enter it. /tmp is a disk here, so fsync costs what it costs.
    server = PgServer(durable=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def fmt(value: float, unit: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "ms":
        return f"{value * 1e3:.2f}"
    if unit == "%":
        return f"{value * 100:.1f} %"
    return f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 5 minutes)")
    parser.add_argument("--only", action="append", help="run only these mechanisms")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, among sqlite (collet-limiter on a file), postgresql "
        "(collet-limiter on a server this script starts) and peers; default: all",
    )
    parser.add_argument("--worker")
    parser.add_argument("--mech")
    parser.add_argument("--params")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--hold-ms", type=float, default=0.0)
    parser.add_argument("--events")
    parser.add_argument("--go")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.worker:
        args.role = args.worker
        worker(args)
        return
    backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    if backends - set(BACKENDS):
        parser.error(f"--backends: unknown {', '.join(sorted(backends - set(BACKENDS)))}")
    unknown = [n for n in args.only or [] if n not in MECHANISMS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(MECHANISMS)}")
    default = [n for n in MECHANISMS if n not in OPTIONAL]
    names = [n for n in args.only or default if backend(n) in backends]
    # SIGTERM ends the run like Ctrl-C: the servers' finally blocks stop them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = run(names, args.quick)
    print_table(rows, args.quick)
    over = [name for name, row in rows.items() if peak_holders(row) > LIMIT]
    if over:
        print(f"\nOVER-ADMISSION: more than {LIMIT} holders at once: {', '.join(over)}")
        sys.exit(1)


def run(names: list[str], quick: bool) -> dict[str, dict[Any, Any]]:
    """Every workload for each mechanism in ``names``; starts and stops the servers needed."""
    seconds = 1.0 if quick else 4.0
    rounds = 40 if quick else 200
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="collet-bench-"))
        port = stack.enter_context(redis_server(Path(tmp))) if "Redis BLPOP" in names else None
        if port is None:
            names = [n for n in names if n != "Redis BLPOP"]
        on_pg = [n for n in names if backend(n) == "postgresql"]
        pg = stack.enter_context(postgres_server()) if on_pg else None
        if pg is None and on_pg:
            print("# PostgreSQL: skipped, initdb was not found", file=sys.stderr)
            names = [n for n in names if n not in on_pg]
        runner = Runner(Path(tmp), port, pg)
        for name, module in NEEDS.items():
            if name in names and importlib.util.find_spec(module) is None:
                print(
                    f"# {name}: skipped, {module} is not installed (the bench extra)",
                    file=sys.stderr,
                )
                names.remove(name)
        rows = {}
        for name in names:
            started = time.monotonic()
            row: dict[str, Any] = {"uncontended": runner.uncontended(name, seconds)}
            row["handoff"] = runner.handoff(name, rounds)
            if name in POSTGRES:
                # Each polled handoff waits half a poll interval on average: fewer rounds.
                polled = rounds // 2
                row["handoff_poll"] = runner.handoff(name, polled, listen=False)
                row["handoff_poll_fast"] = runner.handoff(
                    name, polled, listen=False, poll_interval=FAST_POLL
                )
            row["idle8"] = runner.idle_cpu(name, 8, 1, seconds)
            row["idle200"] = runner.idle_cpu(name, 8, 25, seconds)
            for processes, hold in contention_runs(quick):
                row[(processes, hold)] = runner.contention(name, processes, hold, seconds)
            rows[name] = row
            print(f"# {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def peak_holders(row: dict[Any, Any]) -> int:
    """The most holders at once in any contention run, per the observer."""
    return max(v["peak"] for k, v in row.items() if isinstance(k, tuple))


def contention_runs(quick: bool) -> list[tuple[int, int]]:
    """(processes, hold ms) of each contention run; --quick keeps the one the goals are about."""
    return [(16, 1)] if quick else [(2, 0), (4, 0), (16, 0), (2, 1), (4, 1), (16, 1)]


def print_table(rows: dict[str, dict[Any, Any]], quick: bool) -> None:
    print(
        "| mechanism | uncontended cycles/s | handoff p50 / p99 ms | CPU of 8 idle waiters "
        "| CPU of 200 idle waiters | 16 procs, 1 ms hold: share of ideal | Jain | acquire p99 ms "
        "| peak holders (limit 3) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        c = row[(16, 1)]
        peak = peak_holders(row)
        handoff = f"{fmt(row['handoff'][0], 'ms')} / {fmt(row['handoff'][1], 'ms')}"
        idle = f"{fmt(row['idle8'], '%')} | {fmt(row['idle200'], '%')}"
        print(
            f"| {name} | {fmt(row['uncontended'])} | {handoff} | {idle} "
            f"| {fmt(c['share'], '%')} | {c['jain']:.3f} | {fmt(c['p99'], 'ms')} | {peak} |"
        )
    print()
    runs = contention_runs(quick)
    print("| mechanism | " + " | ".join(f"{p} procs, {h} ms: cycles/s" for p, h in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for name, row in rows.items():
        cells = [fmt(v["rate"]) for k, v in row.items() if isinstance(k, tuple)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    reference = {name: row for name, row in rows.items() if name.startswith("collet-limiter")}
    ours = rows.get("collet-limiter (sync)")
    if ours and len(rows) > len(reference):
        print()
        print(
            "Ratios, collet-limiter (sync) / peer (above 1 is more: better for cycles and share, "
            "worse for times and CPU):"
        )
        for name, row in rows.items():
            if not name.startswith("collet-limiter"):
                figures = [
                    ("uncontended cycles", ours["uncontended"], row["uncontended"]),
                    ("handoff p50", ours["handoff"][0], row["handoff"][0]),
                    ("handoff p99", ours["handoff"][1], row["handoff"][1]),
                    ("CPU of 8 idle waiters", ours["idle8"], row["idle8"]),
                    ("16-process share", ours[(16, 1)]["share"], row[(16, 1)]["share"]),
                    ("acquire p99", ours[(16, 1)]["p99"], row[(16, 1)]["p99"]),
                ]
                print(f"- vs {name}: " + ", ".join(ratio(*f) for f in figures))
    print_postgres(rows)


def print_postgres(rows: dict[str, dict[Any, Any]]) -> None:
    """The PostgreSQL rows' polled handoffs, their ratios to SQLite, and the issue's goals."""
    ours = {name: row for name, row in rows.items() if name in POSTGRES}
    if not ours:
        return
    from collet_limiter import Config

    default_poll = Config().limiter.poll_interval_ms
    print()
    print(
        "| mechanism | handoff p50 / p99 ms, LISTEN/NOTIFY | polling only, "
        f"{default_poll:.0f} ms poll interval (default) | polling only, "
        f"{FAST_POLL * 1e3:.0f} ms poll interval |"
    )
    print("|---|---:|---:|---:|")
    for name, row in ours.items():
        cells = [
            f"{fmt(row[key][0], 'ms')} / {fmt(row[key][1], 'ms')}"
            for key in ("handoff", "handoff_poll", "handoff_poll_fast")
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    pairs = [
        (name, sqlite) for name in ours if (sqlite := name.split(", PostgreSQL")[0] + ")") in rows
    ]
    if pairs:
        print()
        print("Ratios, PostgreSQL / SQLite, same face, same run (above 1 is more):")
        for name, sqlite in pairs:
            pg, lite = rows[name], rows[sqlite]
            figures = [
                ("uncontended cycles", pg["uncontended"], lite["uncontended"]),
                ("handoff p50", pg["handoff"][0], lite["handoff"][0]),
                ("handoff p99", pg["handoff"][1], lite["handoff"][1]),
                ("CPU of 8 idle waiters", pg["idle8"], lite["idle8"]),
                ("16-process share", pg[(16, 1)]["share"], lite[(16, 1)]["share"]),
                ("acquire p99", pg[(16, 1)]["p99"], lite[(16, 1)]["p99"]),
            ]
            if (16, 0) in pg and (16, 0) in lite:
                figures.append(("16 procs 0 ms cycles", pg[(16, 0)]["rate"], lite[(16, 0)]["rate"]))
            print(f"- {name} / {sqlite}: " + ", ".join(ratio(*f) for f in figures))
    for peer in (p for p in POSTGRES_PEERS if p in rows):
        print()
        print(f"Ratios, collet-limiter on PostgreSQL / {peer}, same run (above 1 is more):")
        theirs = rows[peer]
        for name, pg in ours.items():
            figures = [
                ("uncontended cycles", pg["uncontended"], theirs["uncontended"]),
                ("handoff p50", pg["handoff"][0], theirs["handoff"][0]),
                ("handoff p99", pg["handoff"][1], theirs["handoff"][1]),
                ("16-process share", pg[(16, 1)]["share"], theirs[(16, 1)]["share"]),
                ("acquire p99", pg[(16, 1)]["p99"], theirs[(16, 1)]["p99"]),
            ]
            print(f"- {name}: " + ", ".join(ratio(*f) for f in figures))
    print()
    print(
        "Goals on PostgreSQL: handoff p50 <= 2 ms across two processes with LISTEN/NOTIFY, "
        "uncontended >= 1,000 cycles/s, 16 processes with 1 ms hold >= 70 % of the ceiling:"
    )
    for name, row in ours.items():
        goals = [
            goal("handoff p50", row["handoff"][0] * 1e3, 2.0, "ms", lower_is_better=True),
            goal("uncontended", row["uncontended"], 1000.0, "cycles/s"),
            goal("16 procs, 1 ms", row[(16, 1)]["share"] * 100, 70.0, "%"),
        ]
        print(f"- {name}: " + "; ".join(goals))


def goal(
    label: str, value: float, target: float, unit: str, *, lower_is_better: bool = False
) -> str:
    """``label value unit (goal target: met | N.NNx off)``; no assert, a figure to read."""
    met = value <= target if lower_is_better else value >= target
    distance = value / target if lower_is_better else target / value if value else math.inf
    verdict = "met" if met else f"{distance:.2f}x off"
    bound = "<=" if lower_is_better else ">="
    shown = f"{value:,.2f}" if unit == "ms" else f"{value:,.1f}" if unit == "%" else f"{value:,.0f}"
    return f"{label} {shown} {unit} (goal {bound} {target:,.0f}: {verdict})"


def ratio(label: str, ours: float, theirs: float) -> str:
    """``label x.xx``, or ``label n/a`` when the peer's figure is zero."""
    return f"{label} {ours / theirs:.2f}x" if theirs else f"{label} n/a (peer 0)"


if __name__ == "__main__":
    main()
