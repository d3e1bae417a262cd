"""Learning from the providers' refusals: cooldowns, adaptive limits, automatic reports and
``call``, on both databases and both faces (fake clock where time matters)."""

from __future__ import annotations

import logging
import math
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import openai
import pytest

from collet_limiter import ConfigError, ModelKey, QueueWait

from .conftest import SMALL, make_config
from .sql import rows

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .conftest import FakeClock

GLM5, GLM47 = ModelKey("zai", "glm-5"), ModelKey("zai", "glm-4.7")
# On PostgreSQL a cooldown's end is the server's clock plus the delay, read a moment before the
# test reads the fake clock: a tolerance far above that latency, far below the delays compared.
SLACK = 0.5


def config(**limiter: Any) -> Any:
    """SMALL (limit 1 per model) with these ``[limiter]`` settings."""
    return make_config(**SMALL, limiter=limiter)


def openai_429(headers: dict[str, str] | None = None, *, code: str = "rate_limit_exceeded") -> Any:
    """The error the openai SDK raises for a 429 with these headers."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(429, headers=headers or {}, request=request)
    body = {"message": "slow down", "type": code, "code": code, "param": None}
    return openai.RateLimitError("Error code: 429", response=response, body=body)


def anthropic_529() -> Any:
    """The error the anthropic SDK raises when the API answers 529 overloaded."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(529, request=request)
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return anthropic.OverloadedError("Error code: 529", response=response, body=body)


def model_status(limiter: Any, key: ModelKey) -> Any:
    return next(m for m in limiter.status().models if m.key == key)


def test_a_reported_model_is_passed_over_by_every_limiter_until_its_cooldown_ends(
    open_limiter: Callable[..., Any], clock: FakeClock
) -> None:
    reporter, other = open_limiter(config()), open_limiter(config())
    lease = reporter.acquire(GLM5)
    cooldown = lease.report_rate_limited(30)
    lease.release()
    assert (cooldown.key, cooldown.kind, cooldown.started) == (GLM5, "rate_limited", True)

    moved = other.acquire(GLM5, [GLM47])
    assert (moved.key, moved.via) == (GLM47, "chain")
    first = other.explain(GLM5, [GLM47]).candidates[0]
    assert not first.has_room
    assert first.reason.startswith("cooling down (rate limited: reported rate limited; ")
    status = model_status(other, GLM5)
    assert status.cooldown_kind == "rate_limited"
    assert status.cooldown_left == pytest.approx(30, abs=SLACK)
    moved.release()

    clock.advance(30 + SLACK)
    assert model_status(other, GLM5).cooldown_until is None
    back = other.acquire(GLM5, [GLM47])
    assert (back.key, back.via) == (GLM5, "primary")


def test_a_later_report_extends_a_cooldown_and_never_shortens_it(
    open_limiter: Callable[..., Any],
) -> None:
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5)
    first = lease.report_rate_limited(60)
    shorter = lease.report_rate_limited(10)
    assert shorter.until == first.until
    assert not shorter.started
    longer = lease.report_rate_limited(100)
    assert (longer.until - first.until).total_seconds() == pytest.approx(40, abs=SLACK)
    assert model_status(limiter, GLM5).cooldown_left == pytest.approx(100, abs=SLACK)


def test_a_report_without_a_delay_cools_for_cooldown_secs_and_a_quota_for_quota_cooldown_secs(
    open_limiter: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    limiter = open_limiter(config(cooldown_secs=45, quota_cooldown_secs=900))
    lease = limiter.acquire(GLM5)
    lease.report_rate_limited()
    assert model_status(limiter, GLM5).cooldown_left == pytest.approx(45, abs=SLACK)
    caplog.set_level(logging.WARNING, logger="collet_limiter")
    for _ in range(3):  # a retry-after of seconds does not cure a quota: the longer one wins
        quota = lease.report_rate_limited(5, quota=True)
    assert quota.kind == "quota"
    status = model_status(limiter, GLM5)
    assert status.cooldown_left == pytest.approx(900, abs=SLACK)
    assert status.cooldown_kind == "quota"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "quota or billing" in errors[0].getMessage()


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "5"])
def test_a_bad_retry_after_is_refused_and_stores_nothing(
    open_limiter: Callable[..., Any], bad: Any
) -> None:
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5)
    with pytest.raises(ConfigError, match="retry_after must be a number of seconds >= 0"):
        lease.report_rate_limited(bad)
    assert model_status(limiter, GLM5).cooldown_until is None


def test_a_providers_429_leaving_the_with_block_is_reported_with_its_retry_after(
    open_limiter: Callable[..., Any],
) -> None:
    limiter = open_limiter(config())
    error = openai_429({"retry-after-ms": "1500", "retry-after": "9"})
    with pytest.raises(openai.RateLimitError) as raised, limiter.acquire(GLM5):
        raise error
    assert raised.value is error
    status = model_status(limiter, GLM5)
    assert (status.in_use, status.cooldown_kind) == (0, "rate_limited")
    assert status.cooldown_left == pytest.approx(1.5, abs=SLACK)
    assert status.cooldown_reason == "HTTP 429 rate_limit_exceeded"


def test_an_overloaded_529_and_an_insufficient_quota_429_are_told_apart(
    open_limiter: Callable[..., Any],
) -> None:
    limiter = open_limiter(config(quota_cooldown_secs=600))
    with pytest.raises(anthropic.OverloadedError), limiter.acquire(GLM5):
        raise anthropic_529()
    with pytest.raises(openai.RateLimitError), limiter.acquire(GLM47):
        raise openai_429(code="insufficient_quota")
    overloaded, quota = model_status(limiter, GLM5), model_status(limiter, GLM47)
    assert overloaded.cooldown_kind == "overloaded"
    assert overloaded.cooldown_left == pytest.approx(30, abs=SLACK)  # no delay given: the default
    assert quota.cooldown_kind == "quota"
    assert quota.cooldown_left == pytest.approx(600, abs=SLACK)


def test_an_exception_that_is_no_refusal_reports_nothing(open_limiter: Callable[..., Any]) -> None:
    limiter = open_limiter(config())
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    server_error = anthropic.InternalServerError(
        "Error code: 500", response=httpx2.Response(500, request=request), body=None
    )
    for error in (ValueError("bug"), server_error):
        with pytest.raises(type(error)), limiter.acquire(GLM5):
            raise error
    status = model_status(limiter, GLM5)
    assert (status.in_use, status.cooldown_until) == (0, None)


def test_acquire_wait_keeps_its_place_through_a_cooldown_and_is_granted_at_its_end(
    open_limiter: Callable[..., Any],
) -> None:
    """Real time: nothing is written when a cooldown ends, so the waiter's watcher must look
    then by itself; the release during the cooldown must grant nobody."""
    holder, waiting = open_limiter(config(), clock=None), open_limiter(config(), clock=None)
    lease = holder.acquire(GLM5)
    cooldown = lease.report_rate_limited(1.5)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(waiting.acquire_wait(GLM5, timeout=20)))
    thread.start()
    try:
        while model_status(holder, GLM5).waiting != 1:
            assert thread.is_alive(), "acquire_wait returned while the model was held"
        lease.release()
        after = model_status(holder, GLM5)
        assert (after.in_use, after.waiting) == (0, 1), "the release granted a cooling model"
    finally:
        thread.join(30)
    (granted,) = got
    assert (granted.key, granted.via) == (GLM5, "queue")
    assert granted.acquired_at >= cooldown.until
    # Woken by its watcher at the end, not found later by the watcher's 10 s sweep nor by the
    # last claim at its deadline (20 s): 5 s leaves a loaded machine room, and tells them apart.
    assert granted.acquired_at - cooldown.until < timedelta(seconds=5)


def test_adaptive_mode_lowers_the_limit_below_the_holders_and_recovers_one_step_per_period(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    settings = {"adaptive": True, "adaptive_recover_secs": 60}
    four = make_config(
        collaboration={"max_agents": 10},
        models=[{"name": "glm-5", "concurrency_limit": 4}],
        providers=[{"name": "zai", "models": ["glm-5"]}],
        limiter=settings,
    )
    limiter = open_limiter(four, lease_ttl=3600)  # the clock moves minutes: leases stay
    held = [limiter.acquire(GLM5) for _ in range(3)]
    cooldown = held[0].report_rate_limited(1)
    assert (cooldown.limit, cooldown.effective_limit) == (4, 2)
    status = model_status(limiter, GLM5)
    assert (status.limit, status.effective_limit, status.in_use) == (4, 2, 3)  # none revoked

    clock.advance(1 + SLACK)  # the cooldown is over; the lowered limit is not
    held.pop().release()
    assert isinstance(limiter.acquire_with_fallback(GLM5), QueueWait)
    reason = limiter.explain(GLM5).candidates[0].reason
    assert reason == "full (2/2 held, adaptive limit 2 of 4)"

    clock.advance(60)  # one period without a refusal: one slot back
    assert model_status(limiter, GLM5).effective_limit == 3
    held.append(limiter.acquire(GLM5))
    assert isinstance(limiter.acquire_with_fallback(GLM5), QueueWait)
    clock.advance(60)
    assert model_status(limiter, GLM5).effective_limit == 4
    held.append(limiter.acquire(GLM5))
    # Back at the configured limit: the claim cleared the row, claims take the fast path again.
    assert rows(database, "SELECT effective_limit FROM models WHERE model = 'glm-5'") == [(None,)]
    clock.advance(600)  # never above the configured limit
    assert model_status(limiter, GLM5).effective_limit == 4
    for lease in held:
        lease.release()


def test_without_adaptive_mode_a_report_leaves_the_limit_alone(
    open_limiter: Callable[..., Any],
) -> None:
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5)
    assert lease.report_rate_limited(1).effective_limit == 1
    assert model_status(limiter, GLM5).effective_limit == 1


def test_another_config_keeps_a_cooldown_and_starts_adaptive_limits_again(
    open_limiter: Callable[..., Any],
) -> None:
    three = [{"name": "glm-5", "concurrency_limit": 3}, *SMALL["models"][1:]]
    first = open_limiter(make_config(**dict(SMALL, models=three), limiter={"adaptive": True}))
    held = [first.acquire(GLM5) for _ in range(3)]
    assert held[0].report_rate_limited(120).effective_limit == 2
    changed = dict(SMALL, models=three, collaboration={"max_agents": 7})
    second = open_limiter(make_config(**changed))
    status = model_status(second, GLM5)
    assert second.status().max_agents == 7
    assert status.cooldown_left == pytest.approx(120, abs=SLACK)
    assert (status.limit, status.effective_limit) == (3, 3)


def test_call_moves_to_the_next_model_after_a_refusal_and_returns_the_result(
    open_limiter: Callable[..., Any],
) -> None:
    limiter = open_limiter(config())
    tried: list[ModelKey] = []

    def ask(lease: Any) -> str:
        tried.append(lease.key)
        if lease.key == GLM5:
            raise openai_429({"retry-after": "20"})
        return f"answer from {lease.key}"

    assert limiter.call(GLM5, ask, [GLM47]) == "answer from zai/glm-4.7"
    assert tried == [GLM5, GLM47]
    status = model_status(limiter, GLM5)
    assert status.cooldown_left == pytest.approx(20, abs=SLACK)
    assert limiter.status().in_use == 0


def test_call_gives_up_after_its_attempts_and_never_retries_other_errors(
    open_limiter: Callable[..., Any],
) -> None:
    limiter = open_limiter(config())
    tried: list[ModelKey] = []

    def always_refused(lease: Any) -> None:
        tried.append(lease.key)
        raise openai_429({"retry-after": "1"})

    with pytest.raises(openai.RateLimitError):
        limiter.call(GLM5, always_refused, [GLM47], attempts=2)
    assert tried == [GLM5, GLM47]

    def broken(lease: Any) -> None:
        tried.append(lease.key)
        raise ValueError("a bug, not a refusal")

    tried.clear()
    with pytest.raises(ValueError, match="a bug"):
        limiter.call(ModelKey("zai", "glm-4.7-flash"), broken, attempts=3)
    assert len(tried) == 1
    assert limiter.status().in_use == 0
    with pytest.raises(ConfigError, match="attempts must be an int >= 1"):
        limiter.call(GLM5, broken, attempts=0)


def test_a_waiters_lock_free_look_sees_a_cooldown_end_with_nothing_written_since(
    database: Path | str, clock: FakeClock
) -> None:
    """The look (a watcher's, without a transaction) judges a cooldown by the limiter's clock:
    on PostgreSQL, the server's clock as the last transaction found it, moved on by ``clock``
    since. Found by the state machine: the look moved with the host's clock instead, so a
    hand-moved clock ended the cooldown for every claim but not for the look."""
    from collet_limiter import Limiter

    limiter = Limiter(database, config=make_config(**SMALL), clock=clock)
    try:
        runtime, core = limiter._runtime, limiter._core
        lease = limiter.acquire(GLM5)
        lease.report_rate_limited(30)
        lease.release()
        request = core.request(GLM5, None, fallback=False, enqueue=True, label="w")
        queued = runtime.write(lambda conn: core.claim(conn, request))
        assert queued.lease is None and queued.ticket is not None, "queued behind the cooldown"
        waiting = core.with_ticket(request, queued)

        def look() -> bool:
            with runtime.connection() as conn:
                (answer,), _ = core.could_grant(conn, [waiting])
            return answer

        assert not look(), "the model is cooling down"
        clock.advance(30 + SLACK)  # nothing is written at the cooldown's end
        assert look(), "the cooldown ended: a claim would grant the waiter"
    finally:
        limiter.close()
