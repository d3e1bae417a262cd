"""Does a large config slow the limiter? 1 model against 50 models in 10 providers, one run.

    python benchmarks/config_scale.py [--seconds 3]

For each config: the time to load and validate it, to open a Limiter on a fresh database (schema
and config written), and uncontended acquire+release cycles per second on one of its models
(with a fallback chain of three), and the same while its primary is held, so that every acquire
reads the models and plans the fallback. Prints a markdown table and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from collet_limiter import Config, Limiter


def config_data(models: int, providers: int) -> dict[str, object]:
    names = [f"model-{index}" for index in range(models)]
    per = max(1, models // providers)
    return {
        "collaboration": {"max_agents": 1000},
        # model-0 takes one holder: the fallback column holds it, so every acquire falls back.
        "models": [
            {"name": name, "concurrency_limit": 1 if index == 0 else 100}
            for index, name in enumerate(names)
        ],
        "providers": [
            {"name": f"provider-{index}", "models": names[index * per : (index + 1) * per]}
            for index in range(providers)
        ],
    }


def rate(cycle: object, seconds: float) -> float:
    """Calls of ``cycle()`` per second over ``seconds``."""
    cycles, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        cycle()  # type: ignore[operator]
        cycles += 1
    return cycles / (time.perf_counter() - started)


def measure(data: dict[str, object], seconds: float) -> tuple[float, float, float, float]:
    started = time.perf_counter()
    config = Config.model_validate(data)
    validated = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        limiter = Limiter(Path(directory) / "limiter.db", config=config)
        opened = time.perf_counter() - started
        chain = ["provider-0/model-1", "provider-0/model-2", "provider-1/model-3"]
        fast = rate(lambda: limiter.acquire("provider-0/model-0", chain).release(), seconds)
        held = limiter.acquire("provider-0/model-0")
        fallback = rate(lambda: limiter.acquire("provider-0/model-0", chain).release(), seconds)
        held.release()
        limiter.close()
    return validated, opened, fast, fallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for label, data in (
        ("1 model, 1 provider", config_data(1, 1)),
        ("50 models, 10 providers", config_data(50, 10)),
    ):
        runs = [measure(data, args.seconds) for _ in range(args.runs)]
        results[label] = [statistics.median(column) for column in zip(*runs, strict=True)]
    print("| config | validate ms | open ms | uncontended cycles/s | fallback cycles/s |")
    print("|---|---:|---:|---:|---:|")
    for label, (validated, opened, fast, fallback) in results.items():
        print(
            f"| {label} | {validated * 1000:.1f} | {opened * 1000:.1f} | {fast:,.0f} "
            f"| {fallback:,.0f} |"
        )
    small, large = results.values()
    print(
        f"\nRatios 50 models / 1 model: uncontended {large[2] / small[2]:.2f}x, "
        f"fallback {large[3] / small[3]:.2f}x"
    )


if __name__ == "__main__":
    main()
