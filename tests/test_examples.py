"""The examples under examples/ run as is, exit 0, and report what their provider saw.

Each runs in a subprocess with a timeout, with this interpreter's directory first on PATH (so
``python3`` and ``collet-limiter`` are the ones under test). Their summaries are parsed, not
trusted: the figures asserted are the fake provider's own counts.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from collet_limiter import Limiter, ModelKey, load_config

from .examples import EXAMPLES, load_example

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT: Final = Path(__file__).resolve().parents[1]
# Seconds an example may take before it counts as hung; they take 3 to 30 s on 2 cores.
TIMEOUT: Final = 240
# A line of an example's summary, as the fake provider counted: model, requests, answered, 429s,
# peak, limit.
SERVER_LINE: Final = re.compile(
    r"^  (?:\S+/)?(?P<model>\S+): (?P<requests>\d+) requests, (?P<ok>\d+) answered, "
    r"(?P<refused>\d+) refused with 429, peak (?P<peak>\d+) in flight "
    r"\(server limit (?P<limit>\d+)\)$",
    re.MULTILINE,
)


fake_provider = load_example("fake_provider")


def _env(**extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        **extra,
    }


def _run(*command: str | Path, timeout: float = TIMEOUT, **extra_env: str) -> str:
    """Run an example from the repository's root; its stdout, once it has exited 0."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=ROOT,
        env=_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _server_lines(text: str) -> dict[str, dict[str, int]]:
    """The provider's counts per model from a summary (the last line for each model wins)."""
    return {
        m["model"]: {k: int(v) for k, v in m.groupdict().items() if k != "model"}
        for m in SERVER_LINE.finditer(text)
    }


def test_the_async_openai_pool_answers_200_tasks_across_both_providers_with_no_429() -> None:
    out = _run(sys.executable, EXAMPLES / "async_openai_pool.py")
    assert "200 of 200 tasks answered" in out, out
    assert re.search(r"^database: \S+ \(temporary\)", out, re.MULTILINE), out
    spread = dict(re.findall(r"^  (\S+/\S+): (\d+)$", out, re.MULTILINE))
    # The gate lets as many ask as the chain has slots, so the first wave fills all three.
    assert set(spread) == {"openai/gpt-4o", "vllm/qwen3-coder", "openai/gpt-4o-mini"}, out
    assert all(int(n) > 0 for n in spread.values()), out
    assert sum(int(n) for n in spread.values()) == 200
    seen = _server_lines(out)
    assert set(seen) == {"gpt-4o", "gpt-4o-mini", "qwen3-coder"}, out
    for model, counts in seen.items():
        assert counts["refused"] == 0, out
        assert counts["requests"] == counts["ok"] == int(spread[_key(model)]), out
        assert 1 <= counts["peak"] <= counts["limit"], out


def _key(model: str) -> str:
    return f"{'vllm' if model == 'qwen3-coder' else 'openai'}/{model}"


@pytest.fixture
def fake_provider_script() -> Iterator[str]:
    """examples/fake_provider.py as a script with the pool example's limits; its URL."""
    command = [sys.executable, str(EXAMPLES / "fake_provider.py"), "--delay", "0.02"]
    for model, limit in {"gpt-4o": 4, "gpt-4o-mini": 6, "qwen3-coder": 3}.items():
        command += ["--limit", f"{model}={limit}"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()  # printed once it listens
            assert url.startswith("http://127.0.0.1:"), url
            yield url
        finally:
            server.terminate()
            server.wait(TIMEOUT)


def test_the_async_openai_pool_uses_the_fake_provider_given_by_base_url(
    fake_provider_script: str, tmp_path: Path
) -> None:
    """--base-url and --db: both providers at one server, and the database where it was told."""
    db = tmp_path / "pool.db"
    out = _run(
        sys.executable,
        EXAMPLES / "async_openai_pool.py",
        "--tasks",
        "40",
        "--base-url",
        fake_provider_script,
        "--db",
        db,
    )
    assert "40 of 40 tasks answered" in out, out
    assert f"database: {db};" in out, out
    assert db.exists()
    stats = fake_provider.fetch_stats(fake_provider_script)
    assert sum(s.ok for s in stats.values()) == 40
    assert sum(s.requests for s in stats.values()) == 40
    assert all(s.rate_limited == 0 for s in stats.values())


def test_the_multiprocess_anthropic_stream_example_streams_every_prompt_with_no_429() -> None:
    out = _run(sys.executable, EXAMPLES / "multiprocess_anthropic_stream.py")
    match = re.search(
        r"^48 of 48 prompts streamed to the end in \S+ s by (\d+) processes", out, re.MULTILINE
    )
    assert match, out
    assert 2 <= int(match[1]) <= 8, out
    seen = _server_lines(out)
    assert set(seen) == {"claude-sonnet", "claude-haiku"}, out
    assert sum(counts["ok"] for counts in seen.values()) == 48
    for counts in seen.values():
        assert (counts["refused"], counts["requests"]) == (0, counts["ok"]), out
        assert 1 <= counts["peak"] <= counts["limit"], out


def _pipeline_sections(out: str) -> tuple[str, str]:
    """The summary of the pass without the limiter, and of the passes with it."""
    without, _, with_limiter = out.partition("database: ")
    assert with_limiter, out
    return without, with_limiter


@pytest.mark.skipif(shutil.which("bash") is None, reason="the pipeline example is a bash script")
@pytest.mark.parametrize(
    ("count", "parallel"), [("10", "5"), pytest.param("40", "20", marks=pytest.mark.slow)]
)
def test_the_pipeline_answers_every_item_with_no_429_under_collet_limiter_run(
    count: str, parallel: str
) -> None:
    """The short version runs 10 items 5 at a time (each `collet-limiter run` costs about half a
    second of CPU to start); the slow one runs the script as is, 40 items 20 at a time."""
    arguments = [] if count == "40" else [count, parallel]
    out = _run("bash", EXAMPLES / "pipeline.sh", *arguments)
    without, with_limiter = _pipeline_sections(out)
    assert re.search(rf"^without the limiter: \d+ of {count} answered$", without, re.MULTILINE)
    assert f"with the limiter: {count} of {count} answered" in with_limiter, out
    counts = _server_lines(with_limiter)["gpt-4o"]
    assert (counts["requests"], counts["ok"], counts["refused"]) == (int(count), int(count), 0)
    assert 1 <= counts["peak"] <= 3
    refused_without = _server_lines(without)["gpt-4o"]["refused"]
    print(f"\npipeline {count} x {parallel}: {refused_without} 429s without the limiter, 0 with")


@functools.cache
def _run_has_cooldown_on_exit() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "collet_limiter", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    ).stdout
    return "--cooldown-on-exit" in help_text


def _needs_cooldown_on_exit() -> None:
    """Skip, saying why, where `collet-limiter run` cannot report an exit status yet."""
    if not _run_has_cooldown_on_exit():
        pytest.skip("collet-limiter run has no --cooldown-on-exit yet (see `run --help`)")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the pipeline example is a bash script")
def test_the_pipeline_with_a_limit_above_the_providers_still_answers_every_item() -> None:
    """The config claims 5 where the provider takes 3: a refused item (exit 75) cools the model
    down and is tried again in the next pass. How many are refused depends on timing."""
    _needs_cooldown_on_exit()
    out = _run("bash", EXAMPLES / "pipeline.sh", "12", "6", "5")
    _, with_limiter = _pipeline_sections(out)
    assert "with the limiter: 12 of 12 answered" in with_limiter, out
    assert "what the limiter learned:" in with_limiter, out
    counts = _server_lines(with_limiter)["gpt-4o"]
    assert counts["ok"] == 12
    assert counts["requests"] == 12 + counts["refused"]


CLAIMS_TWO: Final = """\
[collaboration]
max_agents = 10

[[providers]]
name = "openai"
models = ["gpt-4o"]

[[models]]
name = "gpt-4o"
concurrency_limit = 2   # the provider takes 1

[limiter]
adaptive = true
cooldown_secs = 300     # long enough to be seen; the test ends it by ending the database
"""


def test_call_models_exit_75_under_run_cools_the_model_down_for_every_process(
    database: Path | str, tmp_path: Path
) -> None:
    """call_model.py exits 75 on a 429 and `run --cooldown-on-exit 75` reports it: the model
    cools down (kind exit_code), its adaptive limit drops to 1, and the next run waits."""
    _needs_cooldown_on_exit()
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(CLAIMS_TWO))
    key = ModelKey("openai", "gpt-4o")
    env = _env(COLLET_LIMITER_DB=str(database), COLLET_LIMITER_CONFIG=str(config))
    with fake_provider.FakeProvider({"gpt-4o": 1}, hold=True, retry_after=300) as server:
        run = [sys.executable, "-m", "collet_limiter", "run", "-q", "--model", str(key)]
        call = ["--", sys.executable, str(EXAMPLES / "call_model.py"), "--base-url", server.url]
        with subprocess.Popen(
            [*run, *call, "--prompt", "first"], env=env, stdout=subprocess.PIPE, text=True
        ) as first:
            try:
                server.wait_until(lambda stats: stats["gpt-4o"].in_flight == 1, TIMEOUT)
                second = subprocess.run(
                    [*run, "--cooldown-on-exit", "75", *call, "--prompt", "second"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT,
                    check=False,
                )
                with Limiter(database, config=load_config(config)) as limiter:
                    model = next(m for m in limiter.status().models if m.key == key)
            finally:
                server.configure(hold=False)
            assert first.stdout is not None
            first_reply = first.stdout.read()
            assert first.wait(TIMEOUT) == 0
        # The model is free now (limit 1, none in use) but cooling: a run with --timeout 0
        # gives up at once and runs nothing (its own status 99 here, as 75 is call_model's).
        third = subprocess.run(
            [*run, "--timeout", "0", "--timeout-exit-code", "99", *call],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        stats = server.stats()["gpt-4o"]
    assert second.returncode == 75, second.stderr
    assert "HTTP 429" in second.stderr
    assert (model.cooldown_kind, model.in_use, model.effective_limit) == ("exit_code", 1, 1)
    assert 0 < model.cooldown_left <= 300
    assert third.returncode == 99, third.stderr
    assert first_reply == "Fake reply from gpt-4o to: first\n"
    assert (stats.requests, stats.ok, stats.rate_limited) == (2, 1, 1)


def test_call_model_needs_a_model_and_a_url() -> None:
    """Usage errors exit 2 (argparse) or 1 with one line, before any network traffic."""
    env = {k: v for k, v in _env().items() if k not in ("COLLET_LIMITER_MODEL", "OPENAI_BASE_URL")}
    script = str(EXAMPLES / "call_model.py")
    no_model = subprocess.run(
        [sys.executable, script, "--base-url", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    no_url = subprocess.run(
        [sys.executable, script, "--model", "gpt-4o"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert no_model.returncode == 2
    assert "no model" in no_model.stderr
    assert no_url.returncode == 1
    assert no_url.stderr.strip() == "call_model: give --base-url or set OPENAI_BASE_URL"
