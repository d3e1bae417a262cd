"""A fake LLM provider on loopback that enforces per-model concurrency limits.

For collet-limiter's tests and examples: point the official ``openai`` and ``anthropic`` SDKs at
it, send a storm of calls, and watch the 429s it gives without the limiter turn into finished work
with it. It is not a real provider and imitates one only as far as those SDKs need: ``POST
/v1/chat/completions`` and ``POST /v1/messages``, as JSON or as their event streams, answering
canned text that echoes the prompt. Per model (see :class:`Config`, changeable while running):

- a concurrency limit. A request is in flight from the moment it has been read until the last
  bytes of its answer or stream go to the socket (the slot is freed just before that write, so a
  client seeing its answer complete may start the next at once). One arriving while its model has
  ``limit`` in flight gets 429 at once, ``retry-after`` (whole seconds, rounded up),
  ``retry-after-ms``, and the body its SDK raises ``RateLimitError`` for;
- a mode: ``quota`` (OpenAI 429 ``insufficient_quota``, Anthropic 402 ``billing_error``; with
  ``x-should-retry: false``), ``overloaded`` (OpenAI 503, Anthropic 529) or ``normal``;
- a time per answer (``delay``), spread over a stream's events; and ``hold``, which makes admitted
  requests wait until it is turned off, so a test can fill a model to its limit without racing.

In-process, a thread runs the asyncio server (h11, HTTP/1.1 with keep-alive)::

    with FakeProvider(limits={"gpt-4o": 3}, delay=0.05) as server:
        client = openai.OpenAI(base_url=server.base_url_openai, api_key="fake")
        ...

As a script it prints its URL and serves until SIGINT or SIGTERM::

    python examples/fake_provider.py --limit gpt-4o=3 --limit claude-sonnet=2 --delay 0.1

Other processes use ``GET /stats``, ``POST /reset``, ``GET``/``POST /config`` (JSON), or
:func:`fetch_stats`, :func:`remote_reset` and :func:`remote_configure`. ``examples/`` is no
package: tests load this file by its path (see ``tests/test_fake_provider.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import signal
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

import h11

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

HOST: Final = "127.0.0.1"  # loopback only: a test double, never a service
MODES: Final = ("normal", "quota", "overloaded")
# The SDKs open one pooled connection per concurrent request; the default listen backlog (100)
# would leave part of a burst of hundreds waiting on SYN retransmits.
BACKLOG: Final = 2048
READ_SIZE: Final = 65536
# How long start() waits for the bind and stop() for the thread; generous for a loaded CI host.
THREAD_TIMEOUT: Final = 10.0
_Refused = tuple[int, Any, list[tuple[str, str]]]  # status, JSON body, headers
_COUNTERS: Final = {"limit": "rate_limited", "quota": "quota", "overloaded": "overloaded"}
_MESSAGES: Final = {
    "limit": "Rate limit reached for {model}: {limit} requests in flight",
    "quota": "You exceeded your current quota; your credit balance is too low",
    "overloaded": "The server is overloaded",
    "invalid": "The body must be a JSON object naming a model",
}
# (api, reason) -> (status, error type, code) as each provider answers; the openai SDK reads
# code and type from the body, the anthropic one picks its exception class by status.
_ERRORS: Final = {
    ("openai", "limit"): (429, "requests", "rate_limit_exceeded"),
    ("openai", "quota"): (429, "insufficient_quota", "insufficient_quota"),
    ("openai", "overloaded"): (503, "server_error", None),
    ("openai", "invalid"): (400, "invalid_request_error", None),
    ("anthropic", "limit"): (429, "rate_limit_error", None),
    ("anthropic", "quota"): (402, "billing_error", None),
    ("anthropic", "overloaded"): (529, "overloaded_error", None),
    ("anthropic", "invalid"): (400, "invalid_request_error", None),
}


@dataclass
class Refusal:
    """One request the provider turned away."""

    at: float  # time.time() when it was refused
    status: int
    reason: str  # "limit", "quota" or "overloaded"


@dataclass
class ModelStats:
    """What one model has seen since the start or the last reset."""

    requests: int = 0  # every request naming the model
    ok: int = 0  # answered in full
    rate_limited: int = 0  # refused with 429 because the model was at its limit
    quota: int = 0  # refused in quota mode
    overloaded: int = 0  # refused in overloaded mode
    aborted: int = 0  # admitted, but the client left (or the server stopped) before the end
    in_flight: int = 0
    peak: int = 0  # the most in flight at once
    refusals: list[Refusal] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelStats:
        """The stats from their JSON form (``GET /stats``)."""
        return cls(**{**data, "refusals": [Refusal(**r) for r in data.get("refusals", ())]})


class Stats(dict[str, ModelStats]):
    """Stats per model name; a model never seen reads as all zeros (without being added)."""

    def __missing__(self, model: str) -> ModelStats:
        return ModelStats()


@dataclass
class Config:
    """How the provider behaves; change it with FakeProvider.configure or ``POST /config``."""

    limits: dict[str, int] = field(default_factory=dict)
    default_limit: int | None = None  # for models not in limits; None is unlimited
    delay: float = 0.0  # seconds per answer for models not in delays
    delays: dict[str, float] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # a model not in it is "normal"
    retry_after: float = 1.0  # seconds, sent with refusals for the limit and for overload
    hold: bool = False


def changed_config(config: Config, changes: Mapping[str, Any]) -> Config:
    """A copy of config with changes: scalars replaced, per-model maps merged (None drops one)."""
    new = copy.deepcopy(config)
    for key, value in changes.items():
        if key in ("limits", "delays", "modes"):
            if not isinstance(value, dict):
                raise ValueError(f"{key} must map model names to values, not {value!r}")
            per_model = getattr(new, key)
            for model, setting in value.items():
                if setting is None:
                    per_model.pop(model, None)
                else:
                    per_model[str(model)] = _checked(key, setting)
        elif key in ("default_limit", "delay", "retry_after", "hold"):
            setattr(new, key, _checked(key, value))
        else:
            raise ValueError(f"unknown config key {key!r}")
    return new


def _checked(key: str, value: Any) -> Any:
    if key == "hold" and not isinstance(value, bool):
        raise ValueError(f"hold must be true or false, not {value!r}")
    if key == "modes" and value not in MODES:
        raise ValueError(f"a mode is one of {', '.join(MODES)}, not {value!r}")
    if key in ("hold", "modes") or (key == "default_limit" and value is None):
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a finite number of at least 0, not {value!r}")
    if key in ("limits", "default_limit"):
        if value != int(value):
            raise ValueError(f"a limit is a whole number, not {value!r}")
        return int(value)
    return float(value)


class FakeProvider:
    """The fake provider: a loopback HTTP server on a background thread, and its stats.

    ``with FakeProvider(...) as server`` binds and returns once it accepts connections; leaving
    the block closes the listening socket and every connection (a request still being answered is
    cut off and counted as aborted) and ends the thread. A provider starts only once.
    """

    def __init__(
        self, limits: Mapping[str, int] | None = None, *, port: int = 0, **config: Any
    ) -> None:
        """limits per model, the port (0: one the OS picks), and any keyword of configure()."""
        self._config = changed_config(Config(), {"limits": dict(limits or {}), **config})
        self._requested_port = port
        self._port: int | None = None
        self._stats = Stats()
        self._cond = threading.Condition()  # guards _config and _stats; the loop holds it briefly
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._released = asyncio.Event()  # set when hold is turned off (then replaced)
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> FakeProvider:
        """Bind and start serving; return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("a FakeProvider starts only once")
        # A daemon thread, so a test that forgets to stop it cannot keep the interpreter alive.
        self._thread = threading.Thread(target=self._run, name="fake-provider", daemon=True)
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT):
            raise RuntimeError(f"the fake provider did not start within {THREAD_TIMEOUT} s")
        if self._startup_error is not None:
            self._thread.join(THREAD_TIMEOUT)
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Close every socket and end the thread; calling it again does nothing."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or not thread.is_alive():
            return
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        thread.join(THREAD_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"the fake provider did not stop within {THREAD_TIMEOUT} s")

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (chosen by the OS unless one was asked for)."""
        if self._port is None:
            raise RuntimeError("the fake provider is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the root of the stats and config endpoints."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url_openai(self) -> str:
        """The ``base_url`` for openai clients (they append ``/chat/completions``)."""
        return f"{self.url}/v1"

    @property
    def base_url_anthropic(self) -> str:
        """The ``base_url`` for anthropic clients (they append ``/v1/messages``)."""
        return self.url

    @property
    def config(self) -> Config:
        """A copy of the configuration in force."""
        with self._cond:
            return copy.deepcopy(self._config)

    def stats(self) -> Stats:
        """A snapshot of the stats per model."""
        with self._cond:
            return copy.deepcopy(self._stats)

    def configure(self, **changes: Any) -> Config:
        """Change limits, default_limit, delay, delays, modes, retry_after or hold; the new config.

        Per-model maps are merged into the current ones (a value of None removes that model's
        entry); other keys replace. It applies to requests read after it returns.
        """
        return self._configure(changes)

    def reset(self) -> None:
        """Zero every counter; requests in flight stay counted (and are the new peak)."""
        with self._cond:
            busy = {model: s.in_flight for model, s in self._stats.items() if s.in_flight}
            self._stats = Stats({m: ModelStats(in_flight=n, peak=n) for m, n in busy.items()})
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[Stats], bool], timeout: float = 10.0) -> Stats:
        """Block until predicate holds for the stats (checked on every change); a snapshot then.

        predicate sees the live stats under the lock: it must be quick and must not keep them.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._stats), timeout):
                raise TimeoutError(f"stats did not reach the state in {timeout} s: {self._stats}")
            return copy.deepcopy(self._stats)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        with self._cond:
            busy = {model: s.in_flight for model, s in self._stats.items() if s.in_flight}
        return f"<FakeProvider {where} in_flight={busy}>"

    def _configure(self, changes: Mapping[str, Any]) -> Config:
        with self._cond:
            was_held = self._config.hold
            self._config = changed_config(self._config, changes)
            released = was_held and not self._config.hold
            if released:  # wake the held requests; later holds wait on a fresh event
                event, self._released = self._released, asyncio.Event()
            self._cond.notify_all()
            config = copy.deepcopy(self._config)
        loop = self._loop
        if released and (loop is None or threading.current_thread() is self._thread):
            event.set()
        elif released and loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
                loop.call_soon_threadsafe(event.set)
        return config

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._on_connection, HOST, self._requested_port, backlog=BACKLOG
            )
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            # A connection accepted just before the close runs its first step now, sees
            # _stopping and closes itself; the others are cancelled, and each closes its socket.
            await asyncio.sleep(0)
            while self._tasks:
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs this callback as a task
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while self._stopping is not None and not self._stopping.is_set():
                request, body = await _read_request(conn, reader)
                if request is None:
                    break
                await self._route(conn, writer, request, body)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass  # the client went away or spoke broken HTTP: drop the connection
        except asyncio.CancelledError:
            # Only stop() cancels, and it waits for this task; ending normally keeps asyncio's
            # done-callback from logging the cancellation as an unhandled error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _route(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> None:
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        endpoint = (method, path)
        if endpoint in (("POST", "/v1/chat/completions"), ("POST", "/v1/messages")):
            await self._answer(conn, writer, "openai" if "chat" in path else "anthropic", body)
            return
        status, payload = 200, None  # type: int, Any
        if endpoint == ("GET", "/stats"):
            payload = {"models": {model: asdict(s) for model, s in self.stats().items()}}
        elif endpoint == ("POST", "/reset"):
            self.reset()
            payload = {"reset": True}
        elif endpoint == ("GET", "/config"):
            payload = asdict(self.config)
        elif endpoint == ("POST", "/config"):
            try:
                changes = json.loads(body or b"{}")  # a JSONDecodeError is a ValueError
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                payload = asdict(self._configure(changes))
            except ValueError as exc:
                status, payload = 400, {"error": str(exc)}
        else:
            status, payload = 404, {"error": f"no endpoint {method} {path}"}
        await _send(writer, _encode_json(conn, status, payload))

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, api: str, body: bytes
    ) -> None:
        try:
            payload = json.loads(body)
            model = payload["model"]
            if not isinstance(model, str):
                raise TypeError(model)
        except (ValueError, KeyError, TypeError):
            await _send(writer, _encode_json(conn, *_refusal(api, "invalid", "", None, 0.0)))
            return
        refused, delay = self._admit(api, model)
        if refused is not None:
            await _send(writer, _encode_json(conn, *refused))
            return
        finished = False
        try:
            while True:  # hold is read under the lock, so it applies once configure returns
                with self._cond:
                    held, released = self._config.hold, self._released
                if not held:
                    break
                await released.wait()
            words, prompt_tokens = _reply(model, payload)
            if payload.get("stream"):
                if api == "openai":
                    options = payload.get("stream_options")
                    usage = isinstance(options, dict) and bool(options.get("include_usage"))
                    frames = _openai_stream(model, words, prompt_tokens, include_usage=usage)
                else:
                    frames = _anthropic_stream(model, words, prompt_tokens)
                head = conn.send(h11.Response(status_code=200, headers=_stream_headers(api)))
                await _send(writer, head)
                pause = delay / len(frames)
                for frame in frames[:-1]:
                    await asyncio.sleep(pause)
                    await _send(writer, conn.send(h11.Data(data=frame)))
                await asyncio.sleep(pause)
                last = conn.send(h11.Data(data=frames[-1])) + conn.send(h11.EndOfMessage())
            else:
                await asyncio.sleep(delay)
                reply = _openai_reply if api == "openai" else _anthropic_reply
                last = _encode_json(conn, 200, reply(model, words, prompt_tokens), _id_header(api))
            # The slot is free before the last bytes leave, with no await in between, so the
            # client cannot see its answer complete while the server still counts it in flight.
            self._leave(model, ok=True)
            finished = True
            await _send(writer, last)
        finally:
            if not finished:
                self._leave(model, ok=False)

    def _admit(self, api: str, model: str) -> tuple[_Refused | None, float]:
        """Count the request, then refuse it or give it a slot; the refusal, and its delay."""
        with self._cond:
            stats = self._stats.setdefault(model, ModelStats())
            stats.requests += 1
            config = self._config
            limit = config.limits.get(model, config.default_limit)
            reason = config.modes.get(model, "normal")
            if reason == "normal" and limit is not None and stats.in_flight >= limit:
                reason = "limit"
            self._cond.notify_all()  # the waiters look once this block releases the lock
            if reason != "normal":
                refused = _refusal(api, reason, model, limit, config.retry_after)
                counter = _COUNTERS[reason]
                setattr(stats, counter, getattr(stats, counter) + 1)
                stats.refusals.append(Refusal(at=time.time(), status=refused[0], reason=reason))
                return refused, 0.0
            stats.in_flight += 1
            stats.peak = max(stats.peak, stats.in_flight)
            return None, config.delays.get(model, config.delay)

    def _leave(self, model: str, *, ok: bool) -> None:
        with self._cond:
            stats = self._stats.setdefault(model, ModelStats())
            stats.in_flight -= 1
            if ok:
                stats.ok += 1
            else:
                stats.aborted += 1
            self._cond.notify_all()


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | None, bytes]:
    """The next request and its body, or (None, b"") once the client has closed."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_SIZE))  # b"" tells h11 the peer closed
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:  # ConnectionClosed (PAUSED cannot come: the next request is read after a reply)
            return None, b""


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def _encode_json(
    conn: h11.Connection, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> bytes:
    body = json.dumps(payload).encode()
    head = [("content-type", "application/json"), ("content-length", str(len(body)))]
    response = h11.Response(status_code=status, headers=[*head, *(headers or [])])
    return conn.send(response) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())


def _id_header(api: str) -> list[tuple[str, str]]:
    # The SDKs expose these as request_id on responses and errors.
    return [("x-request-id" if api == "openai" else "request-id", f"req_{uuid.uuid4().hex}")]


def _stream_headers(api: str) -> list[tuple[str, str]]:
    return [("content-type", "text/event-stream"), ("cache-control", "no-cache"), *_id_header(api)]


def _sse(data: Any, *, event: str | None = None) -> bytes:
    line = f"data: {json.dumps(data)}\n\n"
    return (f"event: {event}\n{line}" if event else line).encode()


def _refusal(api: str, reason: str, model: str, limit: int | None, retry_after: float) -> _Refused:
    """(status, body, headers) refusing a request, in the shape the api's SDK parses."""
    message = _MESSAGES[reason].format(model=model, limit=limit) + " (fake provider)"
    retry = [
        ("retry-after", str(math.ceil(retry_after))),
        ("retry-after-ms", str(round(retry_after * 1000))),
    ]
    # x-should-retry: both SDKs obey it, and retrying an exhausted quota only repeats the refusal.
    no_retry = [("x-should-retry", "false")]
    headers = {"limit": retry, "overloaded": retry, "quota": no_retry}.get(reason, [])
    status, kind, code = _ERRORS[api, reason]
    body: Any = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    if api == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
    return status, body, headers + _id_header(api)


def _reply(model: str, payload: Mapping[str, Any]) -> tuple[list[str], int]:
    """The reply's pieces (words, each but the first with its space) and the prompt's tokens."""
    messages = payload.get("messages")
    content: Any = ""
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content", "")
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    prompt = str(content).split()
    words = f"Fake reply from {model} to: {' '.join(prompt[:20])}".split()
    return [words[0], *(f" {word}" for word in words[1:])], len(prompt)


def _openai_reply(model: str, words: list[str], prompt_tokens: int) -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(words), "refusal": None}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        },
    }


def _openai_stream(
    model: str, words: list[str], prompt_tokens: int, *, include_usage: bool
) -> list[bytes]:
    whole = _openai_reply(model, words, prompt_tokens)
    base = {key: whole[key] for key in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice]})

    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": word}) for word in words]
    frames.append(chunk({}, "stop"))
    if include_usage:
        frames.append(_sse({**base, "choices": [], "usage": whole["usage"]}))
    return [*frames, b"data: [DONE]\n\n"]


def _anthropic_reply(model: str, words: list[str], prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(words)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": len(words)},
    }


def _anthropic_stream(model: str, words: list[str], prompt_tokens: int) -> list[bytes]:
    message = _anthropic_reply(model, words, prompt_tokens)
    message |= {"content": [], "stop_reason": None}
    message["usage"] = {"input_tokens": prompt_tokens, "output_tokens": 1}
    done = {"stop_reason": "end_turn", "stop_sequence": None}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "ping"},  # the real API sends one; the SDKs skip it
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
            for w in words
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": done, "usage": {"output_tokens": len(words)}},
        {"type": "message_stop"},
    ]
    return [_sse(event, event=event["type"]) for event in events]


def _request_json(url: str, method: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - our own http:// URL
    with urllib.request.urlopen(request, timeout=THREAD_TIMEOUT) as response:  # noqa: S310 - as above
        return json.load(response)


def fetch_stats(url: str) -> Stats:
    """The stats of the fake provider at url (its ``server.url``), from any process."""
    models = _request_json(f"{url}/stats", "GET")["models"]
    return Stats({model: ModelStats.from_dict(data) for model, data in models.items()})


def remote_reset(url: str) -> None:
    """FakeProvider.reset for the fake provider at url, from any process."""
    _request_json(f"{url}/reset", "POST", {})


def remote_configure(url: str, **changes: Any) -> Config:
    """FakeProvider.configure for the fake provider at url, from any process."""
    return Config(**_request_json(f"{url}/config", "POST", changes))


def _limit_argument(text: str) -> tuple[str, int]:
    model, sep, limit = text.rpartition("=")
    if not sep or not model or not limit.isdigit():
        raise argparse.ArgumentTypeError(f"expected MODEL=N with N a whole number, not {text!r}")
    return model, int(limit)


def main(argv: list[str] | None = None) -> int:
    """Print the URL, then serve on loopback until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        description="A fake OpenAI/Anthropic provider on 127.0.0.1 that refuses requests beyond "
        "per-model concurrency limits with 429 (for collet-limiter's examples; not a real one)."
    )
    add = parser.add_argument
    add(
        "--limit",
        action="append",
        default=[],
        type=_limit_argument,
        metavar="MODEL=N",
        help="at most N requests in flight for MODEL (repeatable)",
    )
    add("--default-limit", type=int, metavar="N", help="the limit of other models (default: none)")
    add("--delay", type=float, default=0.0, metavar="S", help="seconds per answer (default: 0)")
    add("--retry-after", type=float, default=1.0, metavar="S", help="seconds refusals ask to wait")
    add("--port", type=int, default=0, help="the port (default: one the OS picks)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        config = {"default_limit": args.default_limit, "delay": args.delay}
        server = FakeProvider(
            dict(args.limit), port=args.port, retry_after=args.retry_after, **config
        )
        server.start()
    except (OSError, ValueError) as exc:
        parser.exit(1, f"fake_provider: {exc}\n")
    try:
        print(server.url, flush=True)
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
