"""Worker processes for the cross-process tests: ``python tests/workers.py COMMAND ...``.

Each worker is an independent interpreter using only the public API, as a user's process would.
Holders record what they hold in their own events file (see ``observer.py``), so the tests can
check the limits without trusting the limiter's own count.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

from collet_limiter import AcquireTimeout, Limiter, load_config


def _limiter(args: argparse.Namespace) -> Limiter:
    config = load_config(args.config) if args.config else None
    skew = args.clock_skew
    return Limiter(
        args.db,
        config=config,
        poll_interval=args.poll,
        max_poll_interval=args.max_poll,
        lease_ttl=args.ttl,
        # A host whose clock is off by ``skew`` seconds (PostgreSQL must not care).
        clock=(lambda: time.time() + skew) if skew else None,
    )


def churn(args: argparse.Namespace) -> int:
    """Acquire and release ``count`` times, recording every hold in the events file."""
    rng = random.Random(args.seed)
    models = args.models.split(",")
    with _limiter(args) as limiter, open(args.events, "a", buffering=1) as events:
        for _ in range(args.count):
            primary = rng.choice(models)
            chain = [m for m in models if m != primary] if rng.random() < 0.5 else []
            with limiter.acquire(primary, chain, holder=f"churn-{os.getpid()}") as lease:
                events.write(f"{time.monotonic_ns()} + {lease.key} {lease.via}\n")
                time.sleep(rng.uniform(0, args.hold_ms / 1000))
                events.write(f"{time.monotonic_ns()} - {lease.key} {lease.via}\n")
    return 0


def churn_async(args: argparse.Namespace) -> int:
    """``churn`` with an AsyncLimiter and ``async_tasks`` concurrent tasks in this process."""
    import asyncio

    from collet_limiter import AsyncLimiter

    rng = random.Random(args.seed)
    models = args.models.split(",")
    config = load_config(args.config) if args.config else None

    async def main() -> None:
        limiter = AsyncLimiter(
            args.db, config=config, poll_interval=args.poll, max_poll_interval=args.max_poll
        )
        async with limiter:
            with open(args.events, "a", buffering=1) as events:

                async def task(count: int) -> None:
                    for _ in range(count):
                        primary = rng.choice(models)
                        chain = [m for m in models if m != primary] if rng.random() < 0.5 else []
                        async with limiter.acquire(primary, chain, holder="async") as lease:
                            events.write(f"{time.monotonic_ns()} + {lease.key} {lease.via}\n")
                            await asyncio.sleep(rng.uniform(0, args.hold_ms / 1000))
                            events.write(f"{time.monotonic_ns()} - {lease.key} {lease.via}\n")

                share, extra = divmod(args.count, args.async_tasks)
                counts = [share + (i < extra) for i in range(args.async_tasks)]
                await asyncio.gather(*(task(count) for count in counts))

    asyncio.run(main())
    return 0


def churn_interrupted(args: argparse.Namespace) -> int:
    """``churn`` on one model where a third of the acquires give up: a short timeout, or (with
    ``--async-tasks``) a task cancelled after a random delay. Holds are recorded as in churn;
    the give-ups too (``t``), so the test sees they happened."""
    import asyncio

    from collet_limiter import AsyncLimiter

    rng = random.Random(args.seed)
    config = load_config(args.config) if args.config else None

    def give_up() -> float | None:
        return rng.uniform(0, 0.02) if rng.random() < 1 / 3 else None

    if not args.async_tasks:
        with _limiter(args) as limiter, open(args.events, "a", buffering=1) as events:
            for _ in range(args.count):
                try:
                    lease = limiter.acquire_wait(args.model, timeout=give_up(), holder="sync")
                except AcquireTimeout:
                    events.write(f"{time.monotonic_ns()} t {args.model} timeout\n")
                    continue
                with lease:
                    events.write(f"{time.monotonic_ns()} + {lease.key} {lease.via}\n")
                    time.sleep(rng.uniform(0, args.hold_ms / 1000))
                    events.write(f"{time.monotonic_ns()} - {lease.key} {lease.via}\n")
        return 0

    async def main() -> None:
        async with AsyncLimiter(
            args.db, config=config, poll_interval=args.poll, max_poll_interval=args.max_poll
        ) as limiter:
            with open(args.events, "a", buffering=1) as events:

                async def one() -> None:
                    delay = give_up()
                    try:
                        lease = await asyncio.wait_for(limiter.acquire_wait(args.model), delay)
                    except asyncio.TimeoutError:  # the acquire was cancelled
                        events.write(f"{time.monotonic_ns()} t {args.model} cancelled\n")
                        return
                    async with lease:
                        events.write(f"{time.monotonic_ns()} + {lease.key} {lease.via}\n")
                        await asyncio.sleep(rng.uniform(0, args.hold_ms / 1000))
                        events.write(f"{time.monotonic_ns()} - {lease.key} {lease.via}\n")

                async def task(count: int) -> None:
                    for _ in range(count):
                        await one()

                share, extra = divmod(args.count, args.async_tasks)
                counts = [share + (i < extra) for i in range(args.async_tasks)]
                await asyncio.gather(*(task(count) for count in counts))

    asyncio.run(main())
    return 0


def hold(args: argparse.Namespace) -> int:
    """Acquire ``model`` and hold it until killed (or stdin closes)."""
    limiter = _limiter(args)
    lease = limiter.acquire(args.model, holder="holder")
    print(f"HELD {lease.id} {lease.key}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdin.read()
    lease.release()
    limiter.close()
    return 0


def wait(args: argparse.Namespace) -> int:
    """Queue for ``model``; print when granted (monotonic ns), hold briefly, release."""
    with _limiter(args) as limiter:
        print("QUEUING", flush=True)
        try:
            lease = limiter.acquire_wait(args.model, timeout=args.timeout, holder=args.label)
        except AcquireTimeout:
            print("TIMEOUT", flush=True)
            return 3
        print(f"GOT {time.monotonic_ns()} {lease.key} {lease.via}", flush=True)
        time.sleep(args.hold_ms / 1000)
        lease.release()
    return 0


def open_at_once(args: argparse.Namespace) -> int:
    """Wait for the go file, then open the (new) database."""
    go = Path(args.go)
    print("READY", flush=True)
    while not go.exists():
        time.sleep(0.001)
    with _limiter(args) as limiter:
        limiter.acquire("p/m").release()
    print("OPENED", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["churn", "interrupted", "hold", "wait", "open"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--config")
    parser.add_argument("--events")
    parser.add_argument("--models", default="")
    parser.add_argument("--model")
    parser.add_argument("--label")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-ms", type=float, default=2.0)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--poll", type=float, default=0.002)
    parser.add_argument("--max-poll", type=float, default=0.2)
    parser.add_argument("--ttl", type=float)
    parser.add_argument("--clock-skew", type=float, default=0.0)
    parser.add_argument("--go")
    parser.add_argument("--async-tasks", type=int, default=0)
    args = parser.parse_args()
    if args.command == "churn" and args.async_tasks:
        return churn_async(args)
    command = {
        "churn": churn,
        "interrupted": churn_interrupted,
        "hold": hold,
        "wait": wait,
        "open": open_at_once,
    }[args.command]
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
