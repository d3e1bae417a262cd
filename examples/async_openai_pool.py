"""200 asyncio tasks share two OpenAI-compatible providers through one AsyncLimiter.

The config names two providers, each with its own ``base_url``: ``openai`` (gpt-4o and
gpt-4o-mini) and ``vllm``, a local OpenAI-compatible server (qwen3-coder). Every task asks for
``openai/gpt-4o`` with the fallback chain ``vllm/qwen3-coder, openai/gpt-4o-mini`` through
``AsyncLimiter.call``, and calls the model it was granted (``lease.key``) with the client of that
model's provider (``lease.key.provider``): a fallback changes the model *and* the server.

By default it starts one fake provider per provider in this process (``fake_provider.py``, each
enforcing the same limits as the config) and a temporary database, and prints how the work was
spread and what each server saw. To drive a fake provider of your own, started with::

    python examples/fake_provider.py --limit gpt-4o=4 --limit gpt-4o-mini=6 \\
        --limit qwen3-coder=3 --delay 0.05

pass its URL: ``python examples/async_openai_pool.py --base-url http://127.0.0.1:PORT`` (both
providers then point at it). Exits 0 when every task got an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import openai
from fake_provider import FakeProvider, fetch_stats

from collet_limiter import AsyncLimiter, load_config

if TYPE_CHECKING:
    from collet_limiter import AsyncLease, Config

# What each provider's server allows at once; the config tells the limiter the same figures.
SERVER_LIMITS: Final = {"openai": {"gpt-4o": 4, "gpt-4o-mini": 6}, "vllm": {"qwen3-coder": 3}}
PRIMARY: Final = "openai/gpt-4o"
CHAIN: Final = ["vllm/qwen3-coder", "openai/gpt-4o-mini"]
DELAY: Final = 0.05  # seconds the in-process fake providers take per answer

CONFIG: Final = """\
[collaboration]
max_agents = 50                  # the global cap over every model (collet's default is 3)

[[providers]]
name = "openai"
base_url = "{openai}"
api_key_env = "OPENAI_API_KEY"   # not a field the limiter reads; collet's format keeps it
models = ["gpt-4o", "gpt-4o-mini"]

[[providers]]
name = "vllm"                    # a local OpenAI-compatible server
base_url = "{vllm}"
models = ["qwen3-coder"]

[[models]]
name = "gpt-4o"
concurrency_limit = 4

[[models]]
name = "gpt-4o-mini"
concurrency_limit = 6

[[models]]
name = "qwen3-coder"
concurrency_limit = 3

[limiter]
adaptive = true                  # a 429 lowers the model's limit (none is expected here)
"""


def clients_for(config: Config) -> dict[str, openai.AsyncOpenAI]:
    """One client per provider, at its base_url. max_retries=0: the limiter decides on 429s."""
    clients = {}
    for provider in config.providers:
        key_env = (provider.model_extra or {}).get("api_key_env")
        api_key = (os.environ.get(key_env) if key_env else None) or "fake"
        clients[provider.name] = openai.AsyncOpenAI(
            base_url=provider.base_url, api_key=api_key, max_retries=0
        )
    return clients


async def run_pool(config: Config, db: str, tasks: int) -> tuple[list[str], float]:
    """Run the tasks; the model that answered each (as ``provider/model``), and the seconds."""
    clients = clients_for(config)
    async with contextlib.AsyncExitStack() as stack:
        for client in clients.values():
            await stack.enter_async_context(client)
        limiter = await stack.enter_async_context(AsyncLimiter(db, config=config))

        async def ask(lease: AsyncLease, prompt: str) -> str:
            client = clients[lease.key.provider]  # the granted model's provider and base_url
            await client.chat.completions.create(
                model=lease.key.model, messages=[{"role": "user", "content": prompt}]
            )
            return str(lease.key)

        # A waiter queues for its primary only: with more acquires pending than the chain has
        # slots, the surplus would all wait on openai/gpt-4o while a fallback frees up. So at
        # most as many tasks ask at once as the chain can run; the limiter still enforces the
        # limits against every other process using the database.
        keys = [PRIMARY, *CHAIN]
        gate = asyncio.Semaphore(sum([await limiter.resolve_limit(key) for key in keys]))

        async def task(number: int) -> str:
            async with gate:
                return await limiter.call(
                    PRIMARY,
                    lambda lease: ask(lease, f"task {number}: summarise the ticket"),
                    CHAIN,
                    holder=f"task-{number}",
                )

        started = time.monotonic()
        answered = await asyncio.gather(*(task(n) for n in range(tasks)))
        return answered, time.monotonic() - started


def print_server_stats(name: str, url: str, limits: dict[str, int]) -> None:
    """The fake provider's own view of the run: requests, 429s and the peak per model."""
    stats = fetch_stats(url)
    for model, limit in limits.items():
        s = stats[model]
        print(
            f"  {name}/{model}: {s.requests} requests, {s.ok} answered, "
            f"{s.rate_limited} refused with 429, peak {s.peak} in flight (server limit {limit})"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, start the fake providers unless given one, run, summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="how many calls (default 200)")
    parser.add_argument("--base-url", help="a running fake_provider.py (default: start two)")
    parser.add_argument("--db", help="the limiter database (default: a temporary file)")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.base_url:
            urls = dict.fromkeys(SERVER_LIMITS, args.base_url.rstrip("/"))
        else:
            urls = {
                name: stack.enter_context(FakeProvider(limits, delay=DELAY)).url
                for name, limits in SERVER_LIMITS.items()
            }
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="collet-")))
        db = args.db or str(scratch / "limiter.db")
        config_file = scratch / "config.toml"
        # The openai SDK appends /chat/completions to a base_url ending in /v1.
        config_file.write_text(
            CONFIG.format(openai=f"{urls['openai']}/v1", vllm=f"{urls['vllm']}/v1")
        )
        print(f"database: {db}{'' if args.db else ' (temporary)'}; config: {config_file}")
        config = load_config(config_file)

        answered, seconds = asyncio.run(run_pool(config, db, args.tasks))
        spread = collections.Counter(answered)
        print(f"{len(answered)} of {args.tasks} tasks answered in {seconds:.1f} s, by model:")
        for key in [PRIMARY, *CHAIN]:
            print(f"  {key}: {spread[key]}")
        print("what the providers saw:")
        for name, url in urls.items():
            print_server_stats(name, url, SERVER_LIMITS[name])
    return 0 if len(answered) == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
