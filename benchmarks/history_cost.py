"""What writing the history costs: collet-limiter (sync) with ``[limiter] history`` on and off.

    python benchmarks/history_cost.py [--rounds 5] [--seconds 3] [--baseline DIR]

The two run alternately, round after round, in one run of this script (so that the load of a
shared machine falls on both alike), through bench.py's workers: uncontended cycles per second
(one process) and 16 processes on a model of limit 3 with 0 ms and 1 ms holds. Prints each
figure's median and range over the rounds for both, and the median of the per-round ratios
(on / off). Issue 14's budget: the history may cost at most 10 % of the uncontended cycles/s.

``--baseline DIR`` adds a third column: the same workloads on the collet-limiter of another
source tree (``DIR/src``, e.g. a checkout of the commit before the history), against which the
"on / baseline" ratio is what the history changed for a user.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import LIMIT, Runner


class FreshFileRunner(Runner):
    """A runner whose workloads start without a database file: the baseline's own code then
    creates it (this tree's would write a schema revision the baseline does not know)."""

    def fresh(self, mech: str, limit: int = LIMIT) -> dict[str, Any]:
        params = super().fresh(mech, limit)
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(params["db"] + suffix).unlink(missing_ok=True)
        return params


ON, OFF = "collet-limiter (sync)", "collet-limiter (sync, no history)"
BASE = "baseline"  # ON's mechanism, run with DIR/src first on the workers' PYTHONPATH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--baseline", type=Path, help="another source tree to compare with")
    args = parser.parse_args()
    mechs = [ON, OFF] + ([BASE] if args.baseline else [])

    def measure(measure_one: Any, runner: Runner, mech: str) -> float:
        if mech != BASE:
            return float(measure_one(runner, ON if mech == ON else OFF))
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(args.baseline.resolve() / "src")
        try:
            return float(measure_one(baseline_runner, ON))
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before

    workloads = {
        "uncontended cycles/s": lambda r, m: r.uncontended(m, args.seconds),
        "16 procs, 0 ms hold: cycles/s": lambda r, m: r.contention(m, 16, 0, args.seconds)["rate"],
        "16 procs, 1 ms hold: cycles/s": lambda r, m: r.contention(m, 16, 1, args.seconds)["rate"],
    }
    figures: dict[str, dict[str, list[float]]] = {w: {m: [] for m in mechs} for w in workloads}
    with tempfile.TemporaryDirectory(prefix="collet-history-cost-") as tmp:
        runner = Runner(Path(tmp), None)
        baseline_runner = FreshFileRunner(Path(tmp), None)
        for round_ in range(args.rounds):
            for workload, measure_one in workloads.items():
                # Alternate the order, so that none always runs on a warmer machine.
                for mech in mechs if round_ % 2 == 0 else mechs[::-1]:
                    figures[workload][mech].append(measure(measure_one, runner, mech))
            print(f"# round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    base = " | baseline: median (range) | on / baseline" if args.baseline else ""
    print(f"| workload | history on: median (range) | off: median (range) | on / off{base} |")
    print("|---|---:|---:|---:|" + ("---:|---:|" if args.baseline else ""))
    for workload, by_mech in figures.items():
        cells = [workload]
        for mech in mechs:
            values = by_mech[mech]
            cells.append(
                f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
            )
            if mech != ON:
                ratios = [a / b for a, b in zip(by_mech[ON], values, strict=True)]
                cells.append(f"{statistics.median(ratios):.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
