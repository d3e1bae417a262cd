"""What importing collet-limiter costs, from ``python -X importtime`` (medians over runs).

    python benchmarks/import_time.py [--runs 9]

Rows: the interpreter alone (``python -c pass``, wall), ``import collet_limiter`` (wall, and
the package's own cumulative import time), and ``from collet_limiter import Limiter`` (what a
program that takes permits, and ``collet-limiter run``, pays), then where that last one's time
goes: the import time of each top-level package (each module's own time, summed by package).
``PYTHONDONTWRITEBYTECODE`` is dropped from the children's environment and a warm-up run comes
first, so they import cached bytecode as an installed package does. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(code: str, runs: int) -> list[float]:
    """Wall seconds of ``python -c code``, one per run (after one warm-up run)."""
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
        times.append(time.perf_counter() - started)
    return times


def importtime(code: str) -> tuple[dict[str, int], dict[str, int]]:
    """From one -X importtime run: cumulative microseconds per top-level import, and the
    modules' own microseconds summed by top-level package."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=ENV,
    )
    costs: dict[str, int] = {}
    packages: dict[str, int] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, field = line[len("import time:") :].split("|")
        name = field.strip()
        package = name.split(".")[0]
        packages[package] = packages.get(package, 0) + int(own)
        if field.startswith("  "):
            continue  # nested: counted in the cumulative time of the import that caused it
        costs[name] = costs.get(name, 0) + int(cumulative)
    return costs, packages


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
        costs, _ = importtime(code)
        own = sum(ms for name, ms in costs.items() if name.startswith("collet_limiter")) / 1000
        rows.append(
            f"| {label} | {statistics.median(times) * 1000:.0f} "
            f"({min(times) * 1000:.0f}-{max(times) * 1000:.0f}) | {own:.0f} |"
        )
    print("| command | wall ms, median (range) | import ms of collet_limiter and what it loads |")
    print("|---|---:|---:|")
    print("\n".join(rows))
    _, packages = importtime("from collet_limiter import Limiter")
    top = sorted(((us, name) for name, us in packages.items()), reverse=True)[:8]
    print()
    print(
        "Where `from collet_limiter import Limiter` spends its import time (ms, each module's "
        f"own time summed by package; {sum(packages.values()) / 1000:.0f} in all):"
    )
    for microseconds, name in top:
        print(f"- {name}: {microseconds / 1000:.0f}")


if __name__ == "__main__":
    main()
