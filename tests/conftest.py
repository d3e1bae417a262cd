"""Shared fixtures: databases on tmp_path, configs, a fake clock, and the hypothesis profiles."""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from collet_limiter import AsyncLimiter, Config, Limiter

from .facades import AsyncFacade, LoopThread
from .pgserver import PgServer, server_from_env

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's env variables or writes to their state directory."""
    for name in ("COLLET_LIMITER_DB", "COLLET_LIMITER_CONFIG", "COLLET_COLLAB_MAX_AGENTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


class FakeClock:
    """A wall clock the test moves by hand; leases expire only when it says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite file path (tests about SQLite files use it; the behavioural ones ``database``)."""
    return tmp_path / "limiter.db"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the whole session, started on first use.

    Started here, not by the caller, so that the README's one test command runs the PostgreSQL
    half too. Where PostgreSQL is not installed the PostgreSQL tests are skipped, except in CI
    (``CI`` set), where that is a failure: ``.ci/run`` installs it.
    """
    server = server_from_env()
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found in CI (.ci/run installs postgresql-15)")
        pytest.skip("PostgreSQL is not installed here (apt install postgresql-15)")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database a behavioural test runs on."""
    return str(request.param)


def fresh_group(server: PgServer) -> str:
    """A URL naming a new, empty limiter group (schema) on ``server``."""
    return server.url(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def database(backend: str, db: Path, request: pytest.FixtureRequest) -> Path | str:
    """The test's database: a SQLite file, or a fresh group (schema) on the PostgreSQL server."""
    if backend == "sqlite":
        return db
    return fresh_group(request.getfixturevalue("pg_server"))


def make_config(**data: Any) -> Config:
    """A Config from keyword sections, as a TOML file would give them."""
    return Config.model_validate(data)


SMALL: dict[str, Any] = {
    "collaboration": {"max_agents": 10},
    "models": [
        {"name": "glm-5", "concurrency_limit": 1},
        {"name": "glm-4.7", "concurrency_limit": 1},
        {"name": "glm-4.7-flash", "concurrency_limit": 1},
        {"name": "sonnet", "concurrency_limit": 1, "cost_tier": "standard"},
    ],
    "providers": [
        {"name": "zai", "models": ["glm-5", "glm-4.7", "glm-4.7-flash"]},
        {"name": "claude", "cli": "claude", "models": ["sonnet"]},
    ],
}


@pytest.fixture
def small_config() -> Config:
    """Four models of limit 1: zai glm-5 (premium), glm-4.7, glm-4.7-flash; the claude CLI."""
    return make_config(**SMALL)


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    """Which face of the limiter a behavioural test drives."""
    return str(request.param)


@pytest.fixture
def open_limiter(api: str, database: Path | str, clock: FakeClock) -> Iterator[Callable[..., Any]]:
    """Open limiters on the test database (fake clock), sync or async by ``api``; closed after.

    Async limiters are driven through ``AsyncFacade`` (blocking calls on a background loop), so
    the same test body checks both faces.
    """
    opened: list[Any] = []
    loop: LoopThread | None = None

    def factory(config: Config | None = None, **kwargs: Any) -> Any:
        nonlocal loop
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("poll_interval", 0.002)
        kwargs.setdefault("max_poll_interval", 0.05)
        path = kwargs.pop("path", database)
        if api == "sync":
            limiter: Any = Limiter(path, config=config or Config(), **kwargs)
        else:
            loop = loop or LoopThread()
            limiter = AsyncFacade(AsyncLimiter(path, config=config or Config(), **kwargs), loop)
        opened.append(limiter)
        return limiter

    yield factory
    for limiter in opened:
        limiter.close()
    if loop is not None:
        loop.stop()


@pytest.fixture
def open_sync_limiter(database: Path | str, clock: FakeClock) -> Iterator[Callable[..., Limiter]]:
    """Open sync Limiters only, for what only the sync face has (fork, its connections)."""
    opened: list[Limiter] = []

    def factory(config: Config | None = None, **kwargs: Any) -> Limiter:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("poll_interval", 0.002)
        kwargs.setdefault("max_poll_interval", 0.05)
        limiter = Limiter(kwargs.pop("path", database), config=config or Config(), **kwargs)
        opened.append(limiter)
        return limiter

    yield factory
    for limiter in opened:
        limiter.close()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run the command line in this process (for what needs no other process): (exit status,
    stdout, stderr); the library logger's settings are put back afterwards."""
    from collet_limiter.cli import _main

    logger = logging.getLogger("collet_limiter")
    saved = (logger.level, logger.propagate, list(logger.handlers))

    def invoke(*args: str) -> tuple[int, str, str]:
        status = _main.run_main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    yield invoke
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]
