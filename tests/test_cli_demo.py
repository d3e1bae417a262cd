"""``collet-limiter demo``, the README's first command, as CI runs it (stdout is not a terminal)."""

from __future__ import annotations

import re

import pytest

from .cli_helpers import run_cli


def numbers(pattern: str, text: str) -> list[int]:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return [int(group) for group in match.groups()]


def check_demo(duration: str, workers: str) -> None:
    result = run_cli("demo", "--duration", duration, "--workers", workers, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr
    assert "Summary, read back from the demo_events table by SQL:" in out
    # Plain progress lines, not a live view, since stdout is a pipe.
    assert re.search(r"^\s+\d+\.\ds of ~\S+s · \d+ granted: primary \d+", out, re.MULTILINE)
    assert "\x1b[" not in out
    for key, limit in (("zai/glm-5", 2), ("zai/glm-4.7", 2), ("claude/sonnet", 1)):
        shown_limit, peak, grants = numbers(rf"{re.escape(key)}\s+(\d+)\s+(\d+)\s+(\d+)\n", out)
        assert shown_limit == limit and 1 <= peak <= limit and grants >= 1
    cap, global_peak, _ = numbers(r"all \(cap\)\s+(\d+)\s+(\d+)\s+(\d+)", out)
    assert global_peak <= cap == 5
    chain, capability, cli = numbers(
        r"fallbacks by kind  chain (\d+), capability (\d+), cli (\d+)", out
    )
    assert min(chain, capability, cli) >= 1
    [waits] = numbers(r"queue waits        (\d+): p50 \d+\.\d\ds, p99 \d+\.\d\ds", out)
    assert waits >= 1
    assert "ok: no model ever had more holders than its limit" in out


def test_the_demo_shows_every_fallback_kind_and_a_queue_wait_within_its_limits() -> None:
    check_demo("3", "6")


@pytest.mark.slow
def test_the_demo_with_its_defaults() -> None:
    check_demo("12", "6")
