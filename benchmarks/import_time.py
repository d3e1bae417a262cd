"""What importing collet-limiter costs, from ``python -X importtime`` (medians over runs).

    python benchmarks/import_time.py [--runs 9]

Rows: the interpreter alone (``python -c pass``, wall), ``import collet_limiter`` (wall, and
the package's own cumulative import time), and ``from collet_limiter import Limiter`` (what a
program that takes permits, and ``collet-limiter run``, pays) with its five costliest imports.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall(code: str, runs: int) -> list[float]:
    """Wall seconds of ``python -c code``, one per run."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return times


def importtime(code: str) -> dict[str, int]:
    """Cumulative microseconds per top-level-or-nested module, from one -X importtime run."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=True,
        capture_output=True,
        text=True,
    )
    costs: dict[str, int] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, field = line[len("import time:") :].split("|")
        if field.startswith("  "):
            continue  # nested: counted in the cumulative time of the import that caused it
        name = field.strip()
        costs[name] = costs.get(name, 0) + int(cumulative)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    rows = []
    for label, code in (
        ("`python -c pass`", "pass"),
        ("`import collet_limiter`", "import collet_limiter"),
        ("`from collet_limiter import Limiter`", "from collet_limiter import Limiter"),
    ):
        times = wall(code, runs)
        costs = importtime(code)
        own = sum(ms for name, ms in costs.items() if name.startswith("collet_limiter")) / 1000
        rows.append(
            f"| {label} | {statistics.median(times) * 1000:.0f} "
            f"({min(times) * 1000:.0f}-{max(times) * 1000:.0f}) | {own:.0f} |"
        )
    print("| command | wall ms, median (range) | import ms of collet_limiter and what it loads |")
    print("|---|---:|---:|")
    print("\n".join(rows))
    costs = importtime("from collet_limiter import Limiter")
    top = sorted(((ms, name) for name, ms in costs.items()), reverse=True)[:8]
    print()
    print("Costliest top-level imports of `from collet_limiter import Limiter` (ms, cumulative):")
    for microseconds, name in top:
        print(f"- {name}: {microseconds / 1000:.0f}")


if __name__ == "__main__":
    main()
