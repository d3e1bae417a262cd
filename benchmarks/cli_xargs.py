"""Many `collet-limiter run` at once from `xargs -P`: observed peaks against the limits, and rate.

    python benchmarks/cli_xargs.py [--runs 48] [--parallel 16] [--hold 0.5]

Two models of limit 2 under a global cap of 3; every run asks for p/a with p/b as its fallback.
Each gated command appends ``<CLOCK_MONOTONIC ns> +|- <granted key> <via>`` to its own file when
it starts and ends, and the files are merged and swept in time order: the peaks come from what
the commands saw, not from the limiter's tables. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
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


def sweep(folder: Path) -> tuple[dict[str, int], int, collections.Counter[str], int]:
    """Peak holders per key, peak in total, grants by via, and the number of grants."""
    events = []
    for path in folder.glob("*.events"):
        for line in path.read_text().splitlines():
            ns, sign, key, via = line.split()
            events.append((int(ns), 1 if sign == "+" else -1, key, via))
    now: collections.Counter[str] = collections.Counter()
    peak: dict[str, int] = {}
    vias: collections.Counter[str] = collections.Counter()
    total = top = 0
    for _, delta, key, via in sorted(events, key=lambda e: (e[0], e[1])):
        now[key] += delta
        total += delta
        if delta > 0:
            vias[via] += 1
            peak[key] = max(peak.get(key, 0), now[key])
            top = max(top, total)
    return peak, top, vias, sum(vias.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=48)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--hold", type=float, default=0.5)
    args = parser.parse_args()
    xargs = shutil.which("xargs")
    assert xargs is not None, "needs xargs"
    with tempfile.TemporaryDirectory(prefix="collet-xargs-") as tmp:
        folder = Path(tmp)
        (folder / "config.toml").write_text(CONFIG)
        base = [sys.executable, "-m", "collet_limiter", "--db", str(folder / "limiter.db")]
        base += ["--config", str(folder / "config.toml"), "-q"]
        subprocess.run([*base, "init"], check=True, capture_output=True)
        command = [*base, "run", "--model", "p/a", "--fallback", "p/b", "--"]
        command += [sys.executable, "-c", CHILD, str(folder / "{}.events"), str(args.hold)]
        started = time.perf_counter()
        subprocess.run(
            [xargs, "-P", str(args.parallel), "-I{}", *command],
            input="".join(f"{n}\n" for n in range(args.runs)),
            text=True,
            check=True,
        )
        elapsed = time.perf_counter() - started
        peak, top, vias, grants = sweep(folder)
    print(f"{args.runs} runs, xargs -P {args.parallel}, each holding {args.hold}s; {elapsed:.1f}s")
    print()
    print("| | limit | observed peak |")
    print("|---|---:|---:|")
    for key in ("p/a", "p/b"):
        print(f"| {key} | 2 | {peak.get(key, 0)} |")
    print(f"| all (global cap) | 3 | {top} |")
    print()
    granted = ", ".join(f"{via} {count}" for via, count in sorted(vias.items()))
    print(f"grants: {grants} ({granted}); {grants / elapsed:.2f} runs/s")
    print(f"(the cap alone would allow {3 / args.hold:.2f} runs/s: 3 at a time, {args.hold}s each)")


if __name__ == "__main__":
    main()
