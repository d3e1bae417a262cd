"""The fake provider (examples/fake_provider.py) serves the official SDKs and enforces its limits.

examples/ is not a package, so this module loads the example by its file path (once per process,
under the name ``fake_provider``); no conftest or sys.path change is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import openai
import pytest

from .examples import load_example

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fake_provider.py"


fake_provider = load_example("fake_provider")
FakeProvider = fake_provider.FakeProvider

MODEL = {"openai": "gpt-4o", "anthropic": "claude-sonnet"}
PROMPT = [{"role": "user", "content": "say hello"}]
RATE_LIMIT_ERROR = {"openai": openai.RateLimitError, "anthropic": anthropic.RateLimitError}
# Seconds a test waits for the provider to reach a state it is driven to; only a failure waits.
PATIENCE = 10.0


def _reply_text(model: str) -> str:
    return f"Fake reply from {model} to: say hello"


def _client(api: str, server: Any, *, asynchronous: bool = False, max_retries: int = 0) -> Any:
    if api == "openai":
        cls: Any = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        base_url = server.base_url_openai
    else:
        cls = anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic
        base_url = server.base_url_anthropic
    return cls(base_url=base_url, api_key="fake", max_retries=max_retries)


def _create(api: str, client: Any, **options: Any) -> Any:
    """One call; with an async client, the coroutine to await."""
    if api == "openai":
        return client.chat.completions.create(model=MODEL[api], messages=PROMPT, **options)
    return client.messages.create(model=MODEL[api], max_tokens=64, messages=PROMPT, **options)


def _text(api: str, reply: Any) -> str:
    return reply.choices[0].message.content if api == "openai" else reply.content[0].text


def _http(url: str, method: str = "GET", payload: Any = None) -> tuple[int, Any]:
    """(status, JSON body) of one plain HTTP request, errors included."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=PATIENCE) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


@pytest.fixture
def server() -> Iterator[Any]:
    with FakeProvider() as server:
        yield server


def test_the_openai_client_gets_a_completion_and_a_stream(server: Any) -> None:
    with _client("openai", server) as client:
        completion = _create("openai", client)
        with _create("openai", client, stream=True) as stream:
            pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert _text("openai", completion) == "".join(pieces) == _reply_text("gpt-4o")
    assert completion.usage.prompt_tokens == 2
    assert server.stats()["gpt-4o"].ok == 2


def test_the_async_openai_client_gets_a_completion_and_a_stream(server: Any) -> None:
    async def calls() -> tuple[Any, list[str]]:
        async with _client("openai", server, asynchronous=True) as client:
            completion = await _create("openai", client)
            stream = await _create(
                "openai", client, stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage.completion_tokens == len(chunks) - 3  # role, stop, usage
        return completion, [c.choices[0].delta.content or "" for c in chunks[:-1]]

    completion, pieces = asyncio.run(calls())
    assert _text("openai", completion) == "".join(pieces) == _reply_text("gpt-4o")
    assert server.stats()["gpt-4o"].ok == 2


def test_the_anthropic_client_gets_a_message_and_both_kinds_of_stream(server: Any) -> None:
    with _client("anthropic", server) as client:
        message = _create("anthropic", client)
        with client.messages.stream(
            model="claude-sonnet", max_tokens=64, messages=PROMPT
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        with _create("anthropic", client, stream=True) as raw:
            events = list(raw)
    expected = _reply_text("claude-sonnet")
    assert _text("anthropic", message) == streamed == _text("anthropic", final) == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(expected.split())
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == expected
    assert server.stats()["claude-sonnet"].ok == 3


def test_the_async_anthropic_client_gets_a_message_and_both_kinds_of_stream(server: Any) -> None:
    async def calls() -> tuple[Any, str, Any, list[Any]]:
        async with _client("anthropic", server, asynchronous=True) as client:
            message = await _create("anthropic", client)
            async with client.messages.stream(
                model="claude-sonnet", max_tokens=64, messages=PROMPT
            ) as stream:
                streamed = "".join([text async for text in stream.text_stream])
                final = await stream.get_final_message()
            async with await _create("anthropic", client, stream=True) as raw:
                events = [event async for event in raw]
        return message, streamed, final, events

    message, streamed, final, events = asyncio.run(calls())
    expected = _reply_text("claude-sonnet")
    assert _text("anthropic", message) == streamed == _text("anthropic", final) == expected
    assert [e.type for e in events][-1] == "message_stop"
    assert server.stats()["claude-sonnet"].ok == 3


def _burst_in_threads(server: Any, api: str, total: int) -> list[Any]:
    """total calls released together by a barrier; their replies or errors."""
    barrier = threading.Barrier(total)

    def one(client: Any) -> Any:
        barrier.wait(PATIENCE)
        try:
            return _create(api, client)
        except Exception as exc:
            return exc

    with _client(api, server) as client, ThreadPoolExecutor(total) as pool:
        futures = [pool.submit(one, client) for _ in range(total)]
        try:
            server.wait_until(lambda stats: stats[MODEL[api]].requests == total, PATIENCE)
        finally:
            server.configure(hold=False)  # even on failure, so the pool's threads can end
        return [future.result(PATIENCE) for future in futures]


async def _burst_in_tasks(server: Any, api: str, total: int) -> list[Any]:
    """total calls gathered on one event loop; their replies or errors."""
    async with _client(api, server, asynchronous=True) as client:
        calls = asyncio.gather(
            *(_create(api, client) for _ in range(total)), return_exceptions=True
        )
        try:
            await asyncio.to_thread(
                server.wait_until, lambda stats: stats[MODEL[api]].requests == total, PATIENCE
            )
        finally:
            server.configure(hold=False)
        return await calls


@pytest.mark.parametrize("face", ["threads", "asyncio"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_calls_beyond_a_models_limit_raise_the_sdks_rate_limit_error_and_the_peak_stays_at_it(
    api: str, face: str
) -> None:
    """Hold keeps the admitted calls in flight until every call has arrived, so counts are exact."""
    limit, extra = 3, 5
    model = MODEL[api]
    with FakeProvider({model: limit}, hold=True, retry_after=2.5) as server:
        if face == "threads":
            outcomes = _burst_in_threads(server, api, limit + extra)
        else:
            outcomes = asyncio.run(_burst_in_tasks(server, api, limit + extra))
        stats = server.stats()[model]
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert [type(e) for e in errors] == [RATE_LIMIT_ERROR[api]] * extra, errors
    for error in errors:
        assert error.status_code == 429
        assert error.response.headers["retry-after"] == "3"  # whole seconds, rounded up
        assert error.response.headers["retry-after-ms"] == "2500"
    replies = [o for o in outcomes if not isinstance(o, Exception)]
    assert [_text(api, r) for r in replies] == [_reply_text(model)] * limit
    assert (stats.requests, stats.ok, stats.rate_limited, stats.in_flight) == (8, 3, 5, 0)
    assert stats.peak == limit
    assert [(r.status, r.reason) for r in stats.refusals] == [(429, "limit")] * extra
    assert all(abs(r.at - time.time()) < 60 for r in stats.refusals)  # wall-clock timestamps


def test_a_storm_with_a_delay_never_has_more_than_the_limit_in_flight() -> None:
    """Without hold, how many are refused depends on timing; that the peak stays at most 2 does not."""

    async def storm(server: Any) -> list[Any]:
        async with _client("anthropic", server, asynchronous=True) as client:
            calls = [_create("anthropic", client) for _ in range(40)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with FakeProvider({"claude-sonnet": 2}, delay=0.05) as server:
        outcomes = asyncio.run(storm(server))
        stats = server.stats()["claude-sonnet"]
    refused = [o for o in outcomes if isinstance(o, anthropic.RateLimitError)]
    assert 1 <= stats.peak <= 2
    assert (stats.requests, stats.ok, stats.rate_limited) == (40, 40 - len(refused), len(refused))
    assert stats.ok >= 2  # the first two to arrive find free slots


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_slot_is_free_again_by_the_time_the_client_has_its_whole_answer(api: str) -> None:
    """With a limit of 1, back-to-back calls (plain and streamed) are never refused."""
    with FakeProvider({MODEL[api]: 1}) as server, _client(api, server) as client:
        for _ in range(10):
            _create(api, client)
            with _create(api, client, stream=True) as stream:
                for _event in stream:
                    pass
        stats = server.stats()[MODEL[api]]
    assert (stats.requests, stats.ok, stats.rate_limited) == (20, 20, 0)


def test_quota_mode_raises_openais_insufficient_quota_and_anthropics_billing_error() -> None:
    """Both carry x-should-retry: false, so even clients allowed to retry ask only once."""
    modes = {"gpt-4o": "quota", "claude-sonnet": "quota"}
    with FakeProvider(modes=modes) as server:
        with (
            _client("openai", server, max_retries=2) as client,
            pytest.raises(openai.RateLimitError) as openai_error,
        ):
            _create("openai", client)
        with (
            _client("anthropic", server, max_retries=2) as client,
            pytest.raises(anthropic.PaymentRequiredError) as anthropic_error,
        ):
            _create("anthropic", client)
        stats = server.stats()
    assert openai_error.value.code == openai_error.value.type == "insufficient_quota"
    assert anthropic_error.value.status_code == 402
    assert anthropic_error.value.type == "billing_error"
    for error in (openai_error.value, anthropic_error.value):
        assert error.response.headers["x-should-retry"] == "false"
    for model in modes:
        assert (stats[model].requests, stats[model].quota, stats[model].ok) == (1, 1, 0)
        assert [r.status for r in stats[model].refusals] == [429 if model == "gpt-4o" else 402]


def test_overloaded_mode_gives_anthropic_529_and_openai_503_until_set_back_to_normal(
    server: Any,
) -> None:
    server.configure(modes={"gpt-4o": "overloaded", "claude-sonnet": "overloaded"})
    with _client("anthropic", server) as client:
        with pytest.raises(anthropic.OverloadedError) as anthropic_error:
            _create("anthropic", client)
        server.configure(modes={"claude-sonnet": "normal"})
        assert _text("anthropic", _create("anthropic", client)) == _reply_text("claude-sonnet")
    with _client("openai", server) as client, pytest.raises(openai.InternalServerError) as error:
        _create("openai", client)
    assert anthropic_error.value.status_code == 529
    assert isinstance(anthropic_error.value, anthropic.InternalServerError)
    assert anthropic_error.value.type == "overloaded_error"
    assert error.value.status_code == 503
    assert "retry-after-ms" in error.value.response.headers
    stats = server.stats()
    assert (stats["claude-sonnet"].overloaded, stats["claude-sonnet"].ok) == (1, 1)
    assert (stats["gpt-4o"].overloaded, stats["gpt-4o"].requests) == (1, 1)


def test_stats_reset_and_config_work_over_http(server: Any) -> None:
    url = server.url
    status, config = _http(f"{url}/config", "POST", {"limits": {"gpt-4o": 2}, "delay": 0.01})
    assert status == 200
    assert (config["limits"], config["delay"], config["hold"]) == ({"gpt-4o": 2}, 0.01, False)
    assert _http(f"{url}/config") == (200, config)
    assert server.config.limits == {"gpt-4o": 2}
    with _client("openai", server) as client:
        _create("openai", client)
    status, stats = _http(f"{url}/stats")
    assert status == 200
    assert stats["models"]["gpt-4o"]["ok"] == stats["models"]["gpt-4o"]["peak"] == 1
    assert fake_provider.fetch_stats(url)["gpt-4o"] == server.stats()["gpt-4o"]
    assert _http(f"{url}/reset", "POST", {}) == (200, {"reset": True})
    assert _http(f"{url}/stats") == (200, {"models": {}})
    changed = fake_provider.remote_configure(url, limits={"gpt-4o": None}, modes={"x": "quota"})
    assert (changed.limits, changed.modes) == ({}, {"x": "quota"})
    fake_provider.remote_reset(url)
    status, error = _http(f"{url}/config", "POST", {"modes": {"x": "asleep"}})
    assert status == 400
    assert "asleep" in error["error"]
    assert server.config.modes == {"x": "quota"}  # a refused change changes nothing


@pytest.mark.parametrize(
    "changes",
    [
        {"limits": {"m": -1}},
        {"limits": {"m": 1.5}},
        {"modes": {"m": "asleep"}},
        {"delay": "slow"},
        {"delay": float("inf")},
        {"hold": 1},
        {"delays": [1]},
        {"colour": "blue"},
    ],
)
def test_configure_refuses_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        fake_provider.changed_config(fake_provider.Config(), changes)


def test_malformed_calls_and_unknown_paths_are_refused_without_being_counted(server: Any) -> None:
    status, body = _http(f"{server.base_url_openai}/chat/completions", "POST", {"messages": []})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    status, body = _http(f"{server.url}/v1/messages", "POST", {"model": 3})
    assert (status, body["type"]) == (400, "error")
    assert _http(f"{server.url}/v1/models")[0] == 404
    assert server.stats() == {}


def test_a_models_delay_applies_to_answers_and_streams() -> None:
    """Lower bounds only: the provider sleeps at least this long, however loaded the host."""
    with FakeProvider(delays={"gpt-4o": 0.2}) as server, _client("openai", server) as client:
        started = time.monotonic()
        _create("openai", client)
        answered = time.monotonic()
        with _create("openai", client, stream=True) as stream:
            for _chunk in stream:
                pass
        streamed = time.monotonic()
        assert server.config.delays == {"gpt-4o": 0.2}
    assert answered - started >= 0.19
    assert streamed - answered >= 0.19


async def _raw_call(port: int) -> tuple[bytes, Any]:
    """One chat completion over its own connection, read to its end; (status, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = json.dumps({"model": "gpt-4o", "messages": PROMPT}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\ncontent-length: {len(body)}"
        writer.write(f"{head}\r\nconnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        answer = await reader.read()  # to EOF: the server closes after answering
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, payload = answer.partition(b"\r\n\r\n")
    return head_bytes.split(b"\r\n")[0].split()[1], json.loads(payload)


@contextlib.contextmanager
def _open_files_allowed(needed: int) -> Iterator[None]:
    """Both ends of every connection live in this process: raise a low soft limit for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_five_hundred_connections_are_all_in_flight_at_once() -> None:
    """Raw sockets, one request each: the SDKs' own pools cost seconds at this size."""
    total = 500

    async def calls(server: Any) -> list[tuple[bytes, Any]]:
        pending = asyncio.gather(*(_raw_call(server.port) for _ in range(total)))
        try:
            await asyncio.to_thread(
                server.wait_until, lambda stats: stats["gpt-4o"].in_flight == total, PATIENCE
            )
        finally:
            server.configure(hold=False)
        return await pending

    with _open_files_allowed(2 * total + 200), FakeProvider(hold=True) as server:
        answers = asyncio.run(calls(server))
        stats = server.stats()["gpt-4o"]
    assert {status for status, _ in answers} == {b"200"}
    assert {reply["choices"][0]["message"]["content"] for _, reply in answers} == {
        _reply_text("gpt-4o")
    }
    assert (stats.ok, stats.peak, stats.in_flight) == (total, total, 0)


def test_leaving_the_block_closes_the_port_and_cuts_off_a_call_in_flight() -> None:
    outcome: list[BaseException] = []

    def call(server: Any) -> None:
        with _client("openai", server) as client:
            try:
                _create("openai", client)
            except openai.APIConnectionError as exc:
                outcome.append(exc)

    with FakeProvider(hold=True) as server:
        caller = threading.Thread(target=call, args=(server,))
        caller.start()
        server.wait_until(lambda stats: stats["gpt-4o"].in_flight == 1, PATIENCE)
    caller.join(PATIENCE)
    assert not caller.is_alive()
    assert [type(e) for e in outcome] == [openai.APIConnectionError]
    assert server.stats()["gpt-4o"].aborted == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    assert not server._thread.is_alive()
    server.stop()  # a second stop does nothing


def test_the_script_prints_its_url_and_serves_until_sigterm() -> None:
    command = [sys.executable, str(EXAMPLE), "--limit", "gpt-4o=3", "--limit", "claude-sonnet=2"]
    with subprocess.Popen(
        [*command, "--delay", "0.01"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            url = process.stdout.readline().strip()  # the script prints it once it is listening
            assert url.startswith("http://127.0.0.1:"), process.stderr.read()
            status, config = _http(f"{url}/config")
            assert status == 200
            assert (config["limits"], config["delay"]) == ({"gpt-4o": 3, "claude-sonnet": 2}, 0.01)
            assert fake_provider.fetch_stats(url) == {}
            process.send_signal(signal.SIGTERM)
            assert process.wait(PATIENCE) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_script_refuses_a_malformed_limit_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--limit", "gpt-4o"],
        capture_output=True,
        text=True,
        timeout=PATIENCE * 3,
        check=False,
    )
    assert result.returncode == 2
    assert "MODEL=N" in result.stderr
    assert result.stdout == ""
