"""Eight processes stream Anthropic messages, each with its own Limiter on one SQLite file.

Every worker process opens its own ``Limiter`` on the same database and its own
``anthropic.Anthropic`` client, and for each prompt holds a lease for the whole of
``client.messages.stream(...)``: the slot is given back only when the stream has ended, so the
provider never sees more streams at once than the limit, whichever processes they come from. The
workers ask for ``anthropic/claude-sonnet`` and fall back to ``anthropic/claude-haiku``.

By default it starts the fake provider in this process (``fake_provider.py``, enforcing the same
limits as the config) and uses a temporary database, then prints the provider's own stats. To
use a fake provider of your own, started with::

    python examples/fake_provider.py --limit claude-sonnet=3 --limit claude-haiku=2 --delay 0.2

pass ``--base-url http://127.0.0.1:PORT``. Exits 0 when every prompt got its whole answer.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Final

import anthropic
from fake_provider import FakeProvider, fetch_stats

from collet_limiter import Config, Limiter

SERVER_LIMITS: Final = {"claude-sonnet": 3, "claude-haiku": 2}
PRIMARY: Final = "anthropic/claude-sonnet"
CHAIN: Final = ["anthropic/claude-haiku"]
DELAY: Final = 0.2  # seconds per answer in the in-process fake provider, spread over the stream

# The limiter's view of the provider: the same limits the server enforces.
CONFIG: Final = Config(
    collaboration={"max_agents": 20},  # the global cap over every model (default 3)
    providers=[{"name": "anthropic", "models": list(SERVER_LIMITS)}],
    models=[{"name": model, "concurrency_limit": n} for model, n in SERVER_LIMITS.items()],
)


def worker(db: str, base_url: str, prompts: list[str]) -> list[tuple[int, str, str]]:
    """One process's share: (pid, model granted, streamed text) per prompt.

    The Limiter and the client live as long as this call, in this process only: a Limiter is
    never shared across processes (each opens its own on the same database).
    """
    results = []
    with (
        Limiter(db, config=CONFIG) as limiter,
        anthropic.Anthropic(base_url=base_url, api_key="fake", max_retries=0) as client,
    ):
        for prompt in prompts:
            with (
                limiter.acquire(PRIMARY, CHAIN, holder=f"stream-{os.getpid()}") as lease,
                client.messages.stream(
                    model=lease.key.model,
                    max_tokens=256,
                    messages=[{"role": "user", "content": prompt}],
                ) as stream,
            ):
                text = "".join(stream.text_stream)  # the lease is held until the last event
            results.append((os.getpid(), str(lease.key), text))
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, start the fake provider unless given one, run the pool, summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--prompts", type=int, default=48, help="prompts in all (default 48)")
    parser.add_argument("--base-url", help="a running fake_provider.py (default: start one)")
    parser.add_argument("--db", help="the limiter database (default: a temporary file)")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.base_url:
            url = args.base_url.rstrip("/")
        else:
            url = stack.enter_context(FakeProvider(SERVER_LIMITS, delay=DELAY)).url
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="collet-")))
        db = args.db or str(scratch / "limiter.db")
        print(f"database: {db}{'' if args.db else ' (temporary)'}")

        # forkserver: each worker is forked from a clean server process that imported the SDK
        # once (importing anthropic takes seconds), not from this one, whose threads (the fake
        # provider's) fork() would copy in whatever state they are in.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["anthropic", "collet_limiter._limiter"])
        prompts = [f"prompt {n}: explain the stack trace" for n in range(args.prompts)]
        shares = [prompts[n :: args.processes] for n in range(args.processes)]
        started = time.monotonic()
        with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
            futures = [pool.submit(worker, db, url, share) for share in shares if share]
            results = [result for future in futures for result in future.result()]
        seconds = time.monotonic() - started

        complete = [text for _, _, text in results if text]
        by_model = collections.Counter(key for _, key, _ in results)
        pids = {pid for pid, _, _ in results}
        print(
            f"{len(results)} of {len(prompts)} prompts streamed to the end in {seconds:.1f} s "
            f"by {len(pids)} processes; by model: "
            + ", ".join(f"{key} {by_model[key]}" for key in [PRIMARY, *CHAIN])
        )
        print("what the provider saw:")
        stats = fetch_stats(url)
        for model, limit in SERVER_LIMITS.items():
            s = stats[model]
            print(
                f"  {model}: {s.requests} requests, {s.ok} answered, {s.rate_limited} refused "
                f"with 429, peak {s.peak} in flight (server limit {limit})"
            )
    return 0 if len(complete) == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
