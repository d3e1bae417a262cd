"""Benchmark collet-limiter against its peers, side by side in one run; prints a markdown table.

    python benchmarks/bench.py            # the full run (under 10 minutes on 2 cores)
    python benchmarks/bench.py --quick    # under 2 minutes: shorter, 16 processes x 1 ms only
    python benchmarks/bench.py --only "collet-limiter (sync)" --only "sqlite3, 5 ms poll"

Workloads (limit 3 unless said), each on fresh shared state, every worker a separate process:

- uncontended: one process, acquire+release cycles per second;
- handoff: limit 1; a holder releases while another process is blocked in acquire; the time from
  just before the release call to the waiter's acquire returning, over many handoffs (p50/p99);
- idle CPU: the slots are held and 8 (then 200: 8 processes x 25 threads or tasks) waiters block;
  their CPU time over a window, from /proc, as a share of one core;
- contention: 2, 4 and 16 processes loop acquire, hold (0 or 1 ms), release; throughput, share
  of the ideal rate (limit / mean hold), Jain fairness over per-process counts, acquire p99, and
  an over-admission check by an observer that merges every process's own enter/exit records.

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

from mechanisms import MECHANISMS, NEEDS, cleanup, prepare

TICK = os.sysconf("SC_CLK_TCK")
LIMIT = 3  # every workload but the handoff (limit 1)


# --- worker side ---------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    params = json.loads(args.params)
    mechanism = MECHANISMS[args.mech]
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
    if args.mech == "collet-limiter (async)":
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
    if args.mech == "collet-limiter (sync)":
        shared = MECHANISMS[args.mech](params)
        slots = [shared] * args.threads
    else:
        slots = [MECHANISMS[args.mech](params) for _ in range(args.threads)]
    threads = [threading.Thread(target=slot.acquire, daemon=True) for slot in slots]
    for thread in threads:
        thread.start()
    if args.mech == "collet-limiter (sync)":
        while len(shared.limiter.waiters()) < args.threads * args.processes:
            time.sleep(0.05)
    else:
        time.sleep(1.0)  # the peers keep no queue to look at: give the threads time to block
    print("ready", flush=True)
    for thread in threads:
        thread.join()


# --- runner side ---------------------------------------------------------------------------------


class Runner:
    def __init__(self, workdir: Path, redis_port: int | None) -> None:
        self.workdir, self.redis_port = workdir, redis_port

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
        return prepare(mech, self.workdir, limit, self.redis_port)

    def uncontended(self, mech: str, seconds: float) -> float:
        params = self.fresh(mech)
        child = self.spawn(mech, params, "cycles", "--seconds", str(seconds))
        out, _ = child.communicate(timeout=seconds + 120)
        cleanup(mech, params)
        return float(json.loads(out.splitlines()[-1])["rate"])

    def handoff(self, mech: str, rounds: int) -> tuple[float, float]:
        params = self.fresh(mech, limit=1)
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
            cleanup(mech, params)
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
            cleanup(mech, params)
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
            cleanup(mech, params)
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
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 2 minutes)")
    parser.add_argument("--only", action="append", help="run only these mechanisms")
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
    quick = args.quick
    seconds = 1.0 if quick else 4.0
    rounds = 40 if quick else 200
    names = args.only or list(MECHANISMS)
    with (
        tempfile.TemporaryDirectory(prefix="collet-bench-") as tmp,
        redis_server(Path(tmp)) as port,
    ):
        runner = Runner(Path(tmp), port)
        if port is None:
            names = [n for n in names if n != "Redis BLPOP"]
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
            row["idle8"] = runner.idle_cpu(name, 8, 1, seconds)
            row["idle200"] = runner.idle_cpu(name, 8, 25, seconds)
            for processes, hold in contention_runs(quick):
                row[(processes, hold)] = runner.contention(name, processes, hold, seconds)
            rows[name] = row
            print(f"# {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print_table(rows, quick)
    over = [name for name, row in rows.items() if peak_holders(row) > LIMIT]
    if over:
        print(f"\nOVER-ADMISSION: more than {LIMIT} holders at once: {', '.join(over)}")
        sys.exit(1)


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
    if reference and len(rows) > len(reference):
        print()
        print(
            "Ratios, collet-limiter (sync) / peer (above 1 is more: better for cycles and share, "
            "worse for times and CPU):"
        )
        ours = rows.get("collet-limiter (sync)")
        if ours:
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


def ratio(label: str, ours: float, theirs: float) -> str:
    """``label x.xx``, or ``label n/a`` when the peer's figure is zero."""
    return f"{label} {ours / theirs:.2f}x" if theirs else f"{label} n/a (peer 0)"


if __name__ == "__main__":
    main()
