"""The official SDKs against the fake provider, with and without the limiter.

The fake provider (``examples/fake_provider.py``, loaded by its path) runs on a thread of the
test process and refuses with 429 whatever is over its per-model limits; the callers use the
official ``openai`` and ``anthropic`` SDKs, from real processes or from asyncio tasks. The figures
each test measures are printed (``-s`` shows them).

The first wave of calls is held at the provider (its ``hold`` switch) until the test has seen the
state it asserts: every model at its limit and everyone else queued in the limiter (or refused,
without it); so the peaks asserted are exact, not hoped for.

Worker processes come from a forkserver that imported both SDKs once: importing ``anthropic``
alone costs about two seconds of CPU, and twenty fresh interpreters would spend most of a minute
of a 2-core machine on imports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import multiprocessing
import time
from typing import TYPE_CHECKING, Any, Final

import anthropic
import openai
import pytest

from collet_limiter import AsyncLimiter, Config, Limiter, ModelKey

from .examples import load_example

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


FakeProvider = load_example("fake_provider").FakeProvider

# What the fake provider allows at once, and the limiter's config saying the same.
SERVER_LIMITS: Final = {"gpt-4o": 3, "claude-sonnet": 2}
OPENAI: Final = ModelKey("openai", "gpt-4o")
ANTHROPIC: Final = ModelKey("anthropic", "claude-sonnet")
CONFIG: Final = Config(
    collaboration={"max_agents": 50},  # above every total here: only the model limits bind
    providers=[
        {"name": "openai", "models": ["gpt-4o"]},
        {"name": "anthropic", "models": ["claude-sonnet"]},
    ],
    models=[{"name": model, "concurrency_limit": n} for model, n in SERVER_LIMITS.items()],
)
PROMPT: Final = [{"role": "user", "content": "say hello"}]
# Seconds a test waits for a state it drives the system to; only a failure waits this long.
PATIENCE: Final = 60.0
# Seconds between looks at the limiter's tables while waiting for a state (a read each).
POLL: Final = 0.01
# The provider's refusals ask for this many seconds, so the SDKs' own retries (used only by
# the runs without the limiter) come back quickly.
RETRY_AFTER: Final = 0.1


def _clients(url: str, *, asynchronous: bool = False, max_retries: int = 0) -> dict[str, Any]:
    """A client of each SDK for the fake provider at url, by provider name."""
    if asynchronous:
        return {
            "openai": openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key="fake", max_retries=max_retries
            ),
            "anthropic": anthropic.AsyncAnthropic(
                base_url=url, api_key="fake", max_retries=max_retries
            ),
        }
    return {
        "openai": openai.OpenAI(base_url=f"{url}/v1", api_key="fake", max_retries=max_retries),
        "anthropic": anthropic.Anthropic(base_url=url, api_key="fake", max_retries=max_retries),
    }


def _ask(clients: dict[str, Any], key: ModelKey) -> str:
    """One call to key's model with its provider's SDK; the reply's text."""
    if key.provider == "openai":
        reply = clients["openai"].chat.completions.create(model=key.model, messages=PROMPT)
        return str(reply.choices[0].message.content)
    reply = clients["anthropic"].messages.create(model=key.model, max_tokens=64, messages=PROMPT)
    return str(reply.content[0].text)


async def _ask_async(clients: dict[str, Any], key: ModelKey) -> str:
    """_ask with the async clients."""
    if key.provider == "openai":
        reply = await clients["openai"].chat.completions.create(model=key.model, messages=PROMPT)
        return str(reply.choices[0].message.content)
    reply = await clients["anthropic"].messages.create(
        model=key.model, max_tokens=64, messages=PROMPT
    )
    return str(reply.content[0].text)


def _reply(key: ModelKey) -> str:
    return f"Fake reply from {key.model} to: say hello"


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Look at predicate every POLL seconds until it holds; fail naming what after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached within {timeout} s")
        time.sleep(POLL)


def _at_limits(stats: Any) -> bool:
    return all(stats[model].in_flight == n for model, n in SERVER_LIMITS.items())


def _refused(stats: Any) -> int:
    return sum(s.rate_limited for s in stats.values())


# --- twenty processes ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    """What one worker process does: its number, the database (None: no limiter), the fake
    provider's URL and how many calls to make."""

    index: int
    db: str | None
    url: str
    calls: int


def _sdk_worker(job: _Job, start: Any, results: Any) -> None:
    """A process making calls one after another; puts (index, [(model, reply or error)]).

    Even workers want gpt-4o through the openai SDK, odd ones claude-sonnet through the anthropic
    one. With a database, each call holds a lease of this process's own Limiter and goes to the
    model granted (a fallback may be the other provider's, called with its own SDK); without,
    the call goes straight out with the SDKs' default two retries of a 429.
    """
    primary = OPENAI if job.index % 2 == 0 else ANTHROPIC
    outcomes: list[tuple[str, str]] = []
    try:
        with contextlib.ExitStack() as stack:
            clients = _clients(job.url, max_retries=2 if job.db is None else 0)
            for client in clients.values():
                stack.enter_context(client)
            limiter = (
                None if job.db is None else stack.enter_context(Limiter(job.db, config=CONFIG))
            )
            start.wait(PATIENCE)
            for _ in range(job.calls):
                if limiter is None:
                    try:
                        outcomes.append((str(primary), _ask(clients, primary)))
                    except (openai.RateLimitError, anthropic.RateLimitError) as exc:
                        outcomes.append((str(primary), f"HTTP {exc.status_code}"))
                    continue
                with limiter.acquire(primary, holder=f"worker-{job.index}") as lease:
                    outcomes.append((str(lease.key), _ask(clients, lease.key)))
    except Exception as exc:  # reported with the outcomes, so the test fails at once
        outcomes.append(("error", repr(exc)))
    results.put((job.index, outcomes))


@contextlib.contextmanager
def _forkserver_processes(
    target: Callable[..., None], args: list[tuple[Any, ...]]
) -> Iterator[list[Any]]:
    """Start one process per args tuple from the forkserver; kill and reap any left at the end."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["openai", "anthropic", "collet_limiter._limiter", __name__])
    processes = [context.Process(target=target, args=a, daemon=True) for a in args]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(PATIENCE)


def _run_processes(
    server: Any, database: Path | str | None, *, processes: int, calls: int
) -> tuple[Any, Any, list[tuple[str, str]]]:
    """processes workers of calls each, the first wave held at the provider until every model
    is full and every other worker is refused (no limiter) or queued (limiter).

    Returns the provider's stats at that moment and at the end, and every call's (model, reply
    or error).
    """
    context = multiprocessing.get_context("forkserver")
    start = context.Barrier(processes + 1)
    results = context.Queue()
    db = None if database is None else str(database)
    server.reset()
    server.configure(hold=True)
    observer = Limiter(database, config=CONFIG) if database is not None else None
    try:
        args = [(_Job(i, db, server.url, calls), start, results) for i in range(processes)]
        with _forkserver_processes(_sdk_worker, args) as workers:
            start.wait(PATIENCE)
            try:
                others = processes - sum(SERVER_LIMITS.values())
                if observer is None:
                    server.wait_until(lambda s: _at_limits(s) and _refused(s) >= others, PATIENCE)
                else:
                    # A 429 already breaks what the test asserts: stop waiting, let it fail.
                    server.wait_until(lambda s: _at_limits(s) or _refused(s) > 0, PATIENCE)
                    _wait_for(
                        lambda: len(observer.waiters()) == others or _refused(server.stats()) > 0,
                        f"{others} queued",
                    )
                held = server.stats()
            finally:
                server.configure(hold=False)
            outcomes = dict(results.get(timeout=PATIENCE) for _ in workers)
            for worker in workers:
                worker.join(PATIENCE)
                assert worker.exitcode == 0
    finally:
        if observer is not None:
            observer.close()
    calls_made = [outcome for index in sorted(outcomes) for outcome in outcomes[index]]
    return held, server.stats(), calls_made


@pytest.mark.timeout(180)
def test_twenty_processes_through_the_sdks_get_429s_without_the_limiter_and_none_with_it(
    database: Path | str,
) -> None:
    """The same workload twice: 20 processes of 8 calls each, against limits of 3 and 2."""
    processes, calls = 20, 8
    with FakeProvider(SERVER_LIMITS, delay=0.05, retry_after=RETRY_AFTER) as server:
        started = time.monotonic()
        held_without, without, calls_without = _run_processes(
            server, None, processes=processes, calls=calls
        )
        middle = time.monotonic()
        held_with, with_limiter, calls_with = _run_processes(
            server, database, processes=processes, calls=calls
        )
        seconds = (middle - started, time.monotonic() - middle)
    failed_without = [c for c in calls_without if c[1].startswith("HTTP")]
    print(
        f"\n{processes} processes x {calls} calls: without the limiter {_refused(without)} 429s, "
        f"{len(failed_without)} calls still refused after the SDKs' 2 retries ({seconds[0]:.1f} s"
        f"); with it {_refused(with_limiter)} 429s, "
        f"{sum(s.ok for s in with_limiter.values())} of {processes * calls} answered "
        f"({seconds[1]:.1f} s)"
    )
    assert [c for c in calls_without + calls_with if c[0] == "error"] == []
    # Without: the first wave alone had 15 calls over the limits, all refused.
    assert {model: held_without[model].in_flight for model in SERVER_LIMITS} == SERVER_LIMITS
    assert _refused(without) >= processes - sum(SERVER_LIMITS.values())
    assert {reply for _, reply in calls_without} - {"HTTP 429"} <= {
        _reply(OPENAI),
        _reply(ANTHROPIC),
    }
    # With: the first wave filled both models exactly, and nothing was ever refused.
    assert _refused(held_with) == 0
    assert {model: held_with[model].in_flight for model in SERVER_LIMITS} == SERVER_LIMITS
    assert _refused(with_limiter) == 0
    assert len(calls_with) == processes * calls
    assert all(reply == _reply(ModelKey.parse(key)) for key, reply in calls_with)
    assert {model for model, _ in calls_with} == {str(OPENAI), str(ANTHROPIC)}
    for model, limit in SERVER_LIMITS.items():
        s = with_limiter[model]
        assert (s.requests, s.rate_limited, s.aborted, s.in_flight) == (s.ok, 0, 0, 0)
        assert s.peak == limit
    assert sum(s.ok for s in with_limiter.values()) == processes * calls


# The forkserver imports this module last before forking the workers: collecting now leaves its
# heap (both SDKs, pytest) in the oldest generation with the counters reset, where otherwise every
# child began with a full collection of it (0.2 s of CPU apiece, measured with twenty children).
gc.collect()


# --- five hundred tasks ---------------------------------------------------------------------------


async def _five_hundred_tasks(server: Any, database: Path | str, tasks: int) -> tuple[Any, list]:
    """tasks calls at once on one AsyncLimiter; the stats while held, and the (model, reply)s."""
    others = tasks - sum(SERVER_LIMITS.values())
    async with contextlib.AsyncExitStack() as stack:
        clients = _clients(server.url, asynchronous=True)
        for client in clients.values():
            await stack.enter_async_context(client)
        limiter = await stack.enter_async_context(AsyncLimiter(database, config=CONFIG))

        async def task(number: int) -> tuple[str, str]:
            primary = OPENAI if number % 2 == 0 else ANTHROPIC
            async with limiter.acquire(primary, holder=f"task-{number}") as lease:
                return str(lease.key), await _ask_async(clients, lease.key)

        server.configure(hold=True)
        calls = asyncio.gather(*(task(n) for n in range(tasks)))
        try:
            # A 429 already breaks what the test asserts: stop waiting, let it fail.
            await asyncio.to_thread(
                server.wait_until, lambda s: _at_limits(s) or _refused(s) > 0, PATIENCE
            )
            deadline = time.monotonic() + PATIENCE
            while len(await limiter.waiters()) != others and not _refused(server.stats()):
                assert time.monotonic() < deadline, f"{others} tasks never all queued"
                await asyncio.sleep(POLL)
            held = server.stats()
        finally:
            server.configure(hold=False)
        return held, await calls


@pytest.mark.timeout(180)
def test_five_hundred_tasks_on_one_async_limiter_get_no_429(database: Path | str) -> None:
    """One process, one client per SDK: the limiter keeps each client's calls in flight at the
    model's limit, so hundreds of tasks never crowd a client's connection pool."""
    tasks = 500
    started = time.monotonic()
    with FakeProvider(SERVER_LIMITS, delay=0.02) as server:
        held, calls = asyncio.run(_five_hundred_tasks(server, database, tasks))
        stats = server.stats()
    print(
        f"\n{tasks} tasks: {_refused(stats)} 429s, {sum(s.ok for s in stats.values())} answered "
        f"in {time.monotonic() - started:.1f} s"
    )
    assert {model: held[model].in_flight for model in SERVER_LIMITS} == SERVER_LIMITS
    assert _refused(held) == 0
    assert len(calls) == tasks
    assert all(reply == _reply(ModelKey.parse(key)) for key, reply in calls)
    for model, limit in SERVER_LIMITS.items():
        s = stats[model]
        assert (s.requests, s.rate_limited, s.in_flight, s.peak) == (s.ok, 0, 0, limit)
    assert sum(s.ok for s in stats.values()) == tasks


# --- limits above the provider's ------------------------------------------------------------------

# The provider allows gpt-4o 2 at once; the config claims 6, so the limiter has to learn.
# gpt-4o-mini, the fallback, is configured as it really is.
LEARN_SERVER: Final = {"gpt-4o": 2, "gpt-4o-mini": 3}
LEARN_PRIMARY: Final = ModelKey("openai", "gpt-4o")
LEARN_FALLBACK: Final = ModelKey("openai", "gpt-4o-mini")
CLAIMED: Final = 6
LEARN_RETRY_AFTER: Final = 0.5  # the cooldown each 429 asks for


def _learning_config(*, adaptive: bool) -> Config:
    return Config(
        collaboration={"max_agents": 50},
        providers=[{"name": "openai", "models": ["gpt-4o", "gpt-4o-mini"]}],
        models=[
            {"name": "gpt-4o", "concurrency_limit": CLAIMED},
            {"name": "gpt-4o-mini", "concurrency_limit": LEARN_SERVER["gpt-4o-mini"]},
        ],
        # Recovery slower than the run: a limit learned stays learned while it is measured.
        limiter={"adaptive": adaptive, "adaptive_recover_secs": 600},
    )


async def _learning_run(
    server: Any, database: Path | str, config: Config, *, items: int, workers: int
) -> tuple[dict[int, list[str]], list[Any], float, float]:
    """workers tasks work through items calls with AsyncLimiter.call, primary gpt-4o.

    Returns each item's attempts (the model of each), the gpt-4o status samples taken while it
    ran, and the wall-clock start and end.
    """
    attempts: dict[int, list[str]] = collections.defaultdict(list)
    samples: list[Any] = []
    async with (
        AsyncLimiter(database, config=config) as limiter,
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="fake", max_retries=0) as client,
    ):
        queue: asyncio.Queue[int] = asyncio.Queue()
        for item in range(items):
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                item = queue.get_nowait()

                async def call(lease: Any, item: int = item) -> str:
                    attempts[item].append(str(lease.key))
                    reply = await client.chat.completions.create(
                        model=lease.key.model, messages=PROMPT
                    )
                    return str(reply.choices[0].message.content)

                reply = await limiter.call(
                    LEARN_PRIMARY, call, [LEARN_FALLBACK], attempts=20, holder=f"item-{item}"
                )
                assert reply == _reply(ModelKey.parse(attempts[item][-1]))

        done = asyncio.Event()

        async def sample() -> None:
            """gpt-4o's status every POLL seconds: the cooldowns and limits in force."""
            while not done.is_set():
                status = await limiter.status()
                samples.extend(m for m in status.models if m.key == LEARN_PRIMARY)
                await asyncio.sleep(POLL)

        sampler = asyncio.create_task(sample())
        started = time.time()  # wall clock, as the provider's refusal times
        await asyncio.gather(*(worker() for _ in range(workers)))
        ended = time.time()
        done.set()
        await sampler
        samples.extend(m for m in (await limiter.status()).models if m.key == LEARN_PRIMARY)
    return attempts, samples, started, ended


@pytest.mark.parametrize(
    ("items", "workers"), [(150, 6), pytest.param(1200, 6, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
@pytest.mark.timeout(300)
def test_limits_above_the_providers_cause_429s_that_cool_the_model_and_move_work_to_the_fallback(
    database: Path | str, adaptive: bool, items: int, workers: int
) -> None:
    """The config claims gpt-4o takes 6 at once; the provider takes 2.

    Each 429 is reported by ``call`` (the model cools down for the retry-after) and the item is
    tried again on a new lease, on gpt-4o-mini when it has room. With ``adaptive`` each report
    also lowers gpt-4o's limit, so the 429s stop: the rate in the run's second half is below the
    first's. Without it, the limit stays at 6 and every cooldown's end brings more 429s.
    """
    with FakeProvider(LEARN_SERVER, delay=0.1, retry_after=LEARN_RETRY_AFTER) as server:
        attempts, samples, started, ended = asyncio.run(
            _learning_run(
                server,
                database,
                _learning_config(adaptive=adaptive),
                items=items,
                workers=workers,
            )
        )
        stats = server.stats()
    primary, fallback = stats["gpt-4o"], stats["gpt-4o-mini"]
    middle = (started + ended) / 2
    early = sum(1 for r in primary.refusals if r.at < middle)
    late = primary.rate_limited - early
    per_minute = (early / (middle - started) * 60, late / (ended - middle) * 60)
    moved = [a for a in attempts.values() if len(a) > 1 and a[-1] == str(LEARN_FALLBACK)]
    final = samples[-1]
    print(
        f"\n{'adaptive' if adaptive else 'fixed limit'}: {items} items in {ended - started:.1f} s, "
        f"{primary.rate_limited} 429s: {early} in the first half ({per_minute[0]:.0f}/min), "
        f"{late} in the second ({per_minute[1]:.0f}/min); {len(moved)} items moved to "
        f"{LEARN_FALLBACK} after a 429, at most {max(len(a) for a in attempts.values())} "
        f"attempts for one item; gpt-4o's effective limit at the end "
        f"{final.effective_limit} of {final.limit}"
    )
    # Every item was answered, each refused attempt was made again, the fallback never refused.
    assert sorted(attempts) == list(range(items))
    assert primary.ok + fallback.ok == items
    assert primary.requests == primary.ok + primary.rate_limited
    assert (fallback.requests, fallback.rate_limited) == (fallback.ok, 0)
    assert sum(len(a) for a in attempts.values()) == items + primary.rate_limited
    assert primary.rate_limited > 0
    assert primary.peak == LEARN_SERVER["gpt-4o"]
    # The reports cooled gpt-4o down (for the retry-after asked), and calls moved on.
    cooled = [s for s in samples if s.cooldown_until is not None]
    assert cooled
    assert {s.cooldown_kind for s in cooled} == {"rate_limited"}
    assert max(s.cooldown_left for s in cooled) <= LEARN_RETRY_AFTER
    assert moved
    if adaptive:
        assert final.effective_limit <= LEARN_SERVER["gpt-4o"]
        assert min(s.effective_limit for s in samples) >= 1
        assert per_minute[1] < per_minute[0]
    else:
        assert {s.effective_limit for s in samples} == {CLAIMED}
