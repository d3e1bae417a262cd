"""Does `collet-limiter watch` leak? Draw its live view many times and print memory as it goes.

    python benchmarks/cli_watch_memory.py [--frames 5000]

Builds the same frame `watch` draws (status, leases and the queue through one Inspector) and
renders it to an in-memory terminal, with leases held and released between frames so the tables
change. Prints, every tenth of the run, the frames drawn, the Python heap in use (tracemalloc),
the process's resident set size, the objects the garbage collector tracks, and the time per
frame (slowed by tracemalloc). The heap grows at first while rich's bounded string caches fill
(``lru_cache(4096)`` of cell widths: ages and clock times are new strings each second), then
levels off; objects tracked stay flat. Growth that never levels off would be a leak.
"""

from __future__ import annotations

import argparse
import gc
import io
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from rich.console import Console

from collet_limiter import Inspector, Limiter
from collet_limiter.cli._tables import live_view


def rss_mib() -> float:
    """Current resident set size, from /proc (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collet-watch-memory-") as tmp:
        db = Path(tmp) / "limiter.db"
        limiter = Limiter(db)
        inspector = Inspector(db)
        console = Console(file=io.StringIO(), width=150, height=45, force_terminal=True)
        held = []
        tracemalloc.start()
        step = max(1, args.frames // 10)
        print("| frames | heap in use, KiB | RSS, MiB | gc-tracked objects | ms per frame |")
        print("|---:|---:|---:|---:|---:|")
        started = time.perf_counter()
        for frame in range(1, args.frames + 1):
            if frame % 7 == 0 and len(held) < 4:
                held.append(limiter.acquire(f"p/m{frame % 5}", holder=f"frame-{frame}"))
            elif frame % 5 == 0 and held:
                held.pop(0).release()
            console.print(live_view(inspector, footer="benchmark"))
            console.file = io.StringIO()  # drop what was drawn, as a terminal would
            if frame % step == 0:
                elapsed = (time.perf_counter() - started) * 1000 / step
                gc.collect()
                current, _ = tracemalloc.get_traced_memory()
                print(
                    f"| {frame} | {current / 1024:.0f} | {rss_mib():.1f} | "
                    f"{len(gc.get_objects())} | {elapsed:.2f} |"
                )
                started = time.perf_counter()
        for lease in held:
            lease.release()
        inspector.close()
        limiter.close()


if __name__ == "__main__":
    main()
