"""What `collet-limiter run` costs: `run --model x/y -- true` against `true` and `flock FILE true`.

    python benchmarks/run_overhead.py [--runs 60] [--baseline DIR]

Each command is started the same way (subprocess.run, no shell) on an idle database (created
beforehand), after a few warm-up runs, round after round (each command once per round, so a
noisy moment of this machine touches them all); the wall time of each start-to-exit is
recorded. ``--baseline DIR`` adds `run` from the collet-limiter sources in DIR (``DIR/src``,
e.g. ``git archive REV src migrations | tar -x -C DIR``), to compare two versions in one run.
``PYTHONDONTWRITEBYTECODE`` is dropped from the commands' environment, so they run from cached
bytecode as an installed package does (without it an editable checkout compiles its sources at
every start, some 30 ms here). The overhead columns subtract the mean of `true`
and of `flock`. Two reference rows show where `run`'s time goes: the interpreter starting, and
`import collet_limiter`.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cli() -> list[str]:
    """The installed console script, else the module through this interpreter."""
    script = shutil.which("collet-limiter") or str(Path(sys.executable).with_name("collet-limiter"))
    return [script] if os.path.exists(script) else [sys.executable, "-m", "collet_limiter"]


def timed(
    commands: list[tuple[str, list[str], dict[str, str]]], runs: int, warmup: int
) -> dict[str, list[float]]:
    """Wall-clock milliseconds of each of ``runs`` runs of each command, round after round."""
    for _name, argv, env in commands:
        for _ in range(warmup):
            subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    samples: dict[str, list[float]] = {name: [] for name, _argv, _env in commands}
    for _ in range(runs):
        for name, argv, env in commands:
            started = time.perf_counter()
            subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline", metavar="DIR", help="also time run from DIR/src")
    args = parser.parse_args()

    flock = shutil.which("flock")
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="collet-run-overhead-") as tmp:
        db = str(Path(tmp) / "limiter.db")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COLLET_LIMITER_", "COLLET_COLLAB"))
            # As an installed package: pip compiles its bytecode at install; an editable checkout
            # writes it on the first (warm-up) import unless told not to.
            and k != "PYTHONDONTWRITEBYTECODE"
        }
        env["XDG_STATE_HOME"] = tmp
        subprocess.run([*cli(), "--db", db, "init"], check=True, env=env, stdout=subprocess.DEVNULL)
        run_args = ["--db", db, "run", "--model", "x/y", "--", true]
        commands: list[tuple[str, list[str]]] = [("true", [true])]
        if flock:
            commands.append((f"flock {tmp}/x true", [flock, str(Path(tmp) / "x"), true]))
        commands += [
            (
                "collet-limiter run --model x/y -- true",
                [*cli(), *run_args],
            ),
            ("(reference) python -c pass", [sys.executable, "-c", "pass"]),
            (
                "(reference) python -c 'import collet_limiter'",
                [sys.executable, "-c", "import collet_limiter"],
            ),
        ]
        timed_commands = [(name, argv, env) for name, argv in commands]
        if args.baseline:
            source = str(Path(args.baseline, "src").resolve())
            entry = [sys.executable, "-c", "from collet_limiter.cli import main; main()"]
            timed_commands.append(
                (
                    f"(baseline {args.baseline}) run --model x/y -- true",
                    [*entry, *run_args],
                    {**env, "PYTHONPATH": source},
                )
            )
        results = timed(timed_commands, args.runs, args.warmup)

    base_true = statistics.fmean(results["true"])
    flocked = [v for k, v in results.items() if k.startswith("flock")]
    base_flock = statistics.fmean(flocked[0]) if flocked else float("nan")
    print(
        f"{args.runs} runs each after {args.warmup} warm-up runs; {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}\n"
    )
    print("| command | mean ms | p50 ms | p95 ms | overhead vs true, ms | overhead vs flock, ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, samples in results.items():
        mean = statistics.fmean(samples)
        print(
            f"| `{name}` | {mean:.1f} | {percentile(samples, 50):.1f} | "
            f"{percentile(samples, 95):.1f} | {mean - base_true:+.1f} | {mean - base_flock:+.1f} |"
        )


if __name__ == "__main__":
    main()
