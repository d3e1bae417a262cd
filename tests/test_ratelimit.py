"""rate_limit_signal and parse_retry_after, on the exceptions the real SDKs raise.

The openai and anthropic errors come from real client calls answered by an httpx2 MockTransport,
so each is the class, body and cause chain the SDK builds itself; nothing is hand-assembled.
"""

from __future__ import annotations

import ast
import builtins
import json
import math
import pickle
import sys
import urllib.error
from email.message import Message
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collet_limiter._ratelimit import (
    MAX_RETRY_AFTER,
    RateLimitSignal,
    parse_retry_after,
    rate_limit_signal,
)

NOW = 1_800_000_000.0
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def _reply(status: int, body: object, headers: dict[str, str] | None = None) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if isinstance(body, str):
            return httpx2.Response(status, text=body, headers=headers or {})
        return httpx2.Response(status, json=body, headers=headers or {})

    return handler


def _sse(text: str) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, content=text.encode(), headers={"content-type": "text/event-stream"}
        )

    return handler


def openai_error(
    status: int, body: object, headers: dict[str, str] | None = None, *, stream: str | None = None
) -> openai.APIError:
    """What ``client.chat.completions.create`` raises when the server answers this."""
    handler = _sse(stream) if stream is not None else _reply(status, body, headers)
    with (
        httpx2.Client(transport=httpx2.MockTransport(handler)) as http,
        openai.OpenAI(
            api_key="k", base_url="http://fake/v1", max_retries=0, http_client=http
        ) as client,
    ):
        try:
            if stream is not None:
                for _ in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                    pass
            else:
                client.chat.completions.create(model="m", messages=MESSAGES)
        except openai.APIError as exc:
            return exc
    raise AssertionError("the SDK raised nothing")


def anthropic_error(
    status: int, body: object, headers: dict[str, str] | None = None, *, stream: str | None = None
) -> anthropic.APIError:
    """What ``client.messages.create`` (or a stream) raises when the server answers this."""
    handler = _sse(stream) if stream is not None else _reply(status, body, headers)
    with (
        httpx2.Client(transport=httpx2.MockTransport(handler)) as http,
        anthropic.Anthropic(
            api_key="k", base_url="http://fake", max_retries=0, http_client=http
        ) as client,
    ):
        try:
            if stream is not None:
                with client.messages.stream(model="m", max_tokens=5, messages=MESSAGES) as events:
                    for _ in events:
                        pass
            else:
                client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
        except anthropic.APIError as exc:
            return exc
    raise AssertionError("the SDK raised nothing")


def httpx2_error(
    status: int, headers: dict[str, str] | None = None, body: object = None
) -> httpx2.HTTPStatusError:
    """What ``response.raise_for_status()`` raises (the body, when given, already read)."""
    request = httpx2.Request("POST", "http://fake/v1/chat/completions")
    if body is None:
        response = httpx2.Response(status, headers=headers or {}, request=request)
    else:
        response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    with pytest.raises(httpx2.HTTPStatusError) as caught:
        response.raise_for_status()
    return caught.value


def anthropic_body(error_type: str, error_code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": "refused"}
    if error_code is not None:
        error["details"] = {"error_code": error_code}
    return {"type": "error", "error": error}


def openai_body(code: str | None, error_type: str) -> dict[str, Any]:
    return {"error": {"message": "refused", "type": error_type, "param": None, "code": code}}


OPENAI_429 = openai_body("rate_limit_exceeded", "requests")
OPENAI_QUOTA = openai_body("insufficient_quota", "insufficient_quota")


# --- openai -----------------------------------------------------------------------------------


def test_an_openai_429_is_rate_limited_with_the_delay_the_server_asked_for() -> None:
    exc = openai_error(429, OPENAI_429, {"retry-after": "7"})
    assert type(exc) is openai.RateLimitError
    assert rate_limit_signal(exc) == RateLimitSignal(
        "rate_limited", 7.0, 429, "HTTP 429 rate_limit_exceeded"
    )


def test_openai_insufficient_quota_on_a_429_is_quota_not_a_rate_limit() -> None:
    exc = openai_error(429, OPENAI_QUOTA)
    assert type(exc) is openai.RateLimitError
    assert exc.code == "insufficient_quota"
    assert rate_limit_signal(exc) == RateLimitSignal(
        "quota", None, 429, "HTTP 429 insufficient_quota"
    )


def test_openai_billing_hard_limit_on_a_400_is_quota() -> None:
    exc = openai_error(400, openai_body("billing_hard_limit_reached", "invalid_request_error"))
    assert type(exc) is openai.BadRequestError
    assert rate_limit_signal(exc) == RateLimitSignal(
        "quota", None, 400, "HTTP 400 billing_hard_limit_reached"
    )


def test_an_openai_rate_limit_error_mid_stream_has_no_status_but_is_rate_limited() -> None:
    exc = openai_error(200, None, stream=f"data: {json.dumps(OPENAI_429)}\n\n")
    assert type(exc) is openai.APIError
    assert rate_limit_signal(exc) == RateLimitSignal(
        "rate_limited", None, None, "rate_limit_exceeded"
    )


# --- anthropic --------------------------------------------------------------------------------


def test_an_anthropic_429_is_rate_limited_with_the_delay_the_server_asked_for() -> None:
    headers = {"retry-after": "12", "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:12Z"}
    exc = anthropic_error(429, anthropic_body("rate_limit_error"), headers)
    assert type(exc) is anthropic.RateLimitError
    assert rate_limit_signal(exc) == RateLimitSignal(
        "rate_limited", 12.0, 429, "HTTP 429 rate_limit_error"
    )


def test_an_anthropic_ramp_limit_is_rate_limited_and_named() -> None:
    exc = anthropic_error(429, anthropic_body("rate_limit_error", "ramp_limit_exceeded"))
    assert isinstance(exc, anthropic.RateLimitError)
    assert rate_limit_signal(exc) == RateLimitSignal(
        "rate_limited", None, 429, "HTTP 429 ramp_limit_exceeded"
    )


def test_an_anthropic_529_is_overloaded() -> None:
    exc = anthropic_error(529, anthropic_body("overloaded_error"))
    assert type(exc) is anthropic.OverloadedError
    assert rate_limit_signal(exc) == RateLimitSignal(
        "overloaded", None, 529, "HTTP 529 overloaded_error"
    )


def test_an_anthropic_529_without_a_body_is_still_overloaded() -> None:
    exc = anthropic_error(529, "upstream gone")
    assert type(exc) is anthropic.OverloadedError
    assert rate_limit_signal(exc) == RateLimitSignal("overloaded", None, 529, "HTTP 529")


def test_an_anthropic_overload_mid_stream_arrives_with_status_200_and_is_overloaded() -> None:
    start = (
        '{"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
        '"model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":1,"output_tokens":1}}}'
    )
    error = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    exc = anthropic_error(
        200, None, stream=f"event: message_start\ndata: {start}\n\nevent: error\ndata: {error}\n\n"
    )
    assert type(exc) is anthropic.APIStatusError
    assert exc.status_code == 200
    assert rate_limit_signal(exc) == RateLimitSignal(
        "overloaded", None, 200, "HTTP 200 overloaded_error"
    )


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("enforced_spend_limit_reached", anthropic.EnforcedSpendLimitReachedError),
        ("contract_spend_limit_reached", anthropic.ContractSpendLimitReachedError),
    ],
)
def test_an_anthropic_spend_limit_on_a_429_is_quota(code: str, cls: type[Exception]) -> None:
    exc = anthropic_error(429, anthropic_body("rate_limit_error", code), {"retry-after": "60"})
    assert type(exc) is cls
    assert rate_limit_signal(exc) == RateLimitSignal("quota", 60.0, 429, f"HTTP 429 {code}")


def test_an_anthropic_402_billing_error_is_quota() -> None:
    exc = anthropic_error(402, anthropic_body("billing_error"))
    assert type(exc) is anthropic.PaymentRequiredError
    assert rate_limit_signal(exc) == RateLimitSignal("quota", None, 402, "HTTP 402 billing_error")


# --- what is not a rate limit -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 502, 503])
def test_other_openai_statuses_are_not_rate_limits(status: int) -> None:
    exc = openai_error(status, openai_body(None, "server_error"), {"retry-after": "1"})
    assert rate_limit_signal(exc) is None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (500, "api_error"),
        (503, "api_error"),
    ],
)
def test_other_anthropic_statuses_are_not_rate_limits(status: int, error_type: str) -> None:
    assert rate_limit_signal(anthropic_error(status, anthropic_body(error_type))) is None


def test_a_quota_code_on_a_5xx_is_not_trusted() -> None:
    """A server error that happens to carry a billing code is a server error."""
    assert rate_limit_signal(openai_error(500, OPENAI_QUOTA)) is None


def test_a_connection_error_is_not_a_rate_limit() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with (
        httpx2.Client(transport=httpx2.MockTransport(refuse)) as http,
        openai.OpenAI(
            api_key="k", base_url="http://fake/v1", max_retries=0, http_client=http
        ) as client,
        pytest.raises(openai.APIConnectionError) as caught,
    ):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert rate_limit_signal(caught.value) is None


@pytest.mark.parametrize(
    "exc",
    [ValueError("429 Too Many Requests"), KeyboardInterrupt(), TimeoutError(), OSError(429, "x")],
)
def test_an_exception_without_an_http_status_is_not_a_rate_limit(exc: BaseException) -> None:
    assert rate_limit_signal(exc) is None


# --- plain HTTP clients -----------------------------------------------------------------------


def test_an_httpx2_429_from_raise_for_status_is_rate_limited() -> None:
    exc = httpx2_error(429, {"Retry-After": "30"})
    assert rate_limit_signal(exc) == RateLimitSignal("rate_limited", 30.0, 429, "HTTP 429")


def test_an_httpx2_429_whose_body_was_read_tells_quota_from_rate_limit() -> None:
    exc = httpx2_error(429, body=OPENAI_QUOTA)
    assert rate_limit_signal(exc) == RateLimitSignal(
        "quota", None, 429, "HTTP 429 insufficient_quota"
    )


def test_an_unread_streamed_body_is_not_read() -> None:
    """Classifying an error does no I/O: a body still on the wire is left there."""
    request = httpx2.Request("POST", "http://fake/")
    response = httpx2.Response(429, stream=httpx2.ByteStream(b"{}"), request=request)
    with pytest.raises(httpx2.HTTPStatusError) as caught:
        response.raise_for_status()
    assert rate_limit_signal(caught.value) == RateLimitSignal("rate_limited", None, 429, "HTTP 429")
    assert not response.is_stream_consumed


def test_a_402_without_a_body_is_quota() -> None:
    assert rate_limit_signal(httpx2_error(402)) == RateLimitSignal("quota", None, 402, "HTTP 402")


def test_a_plain_httpx_429_is_rate_limited() -> None:
    """The same reading for httpx itself (installed beside httpx2 only for this test)."""
    httpx = pytest.importorskip("httpx")
    request = httpx.Request("GET", "http://fake/")
    response = httpx.Response(
        429, headers={"retry-after-ms": "250"}, json=OPENAI_QUOTA, request=request
    )
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    assert rate_limit_signal(caught.value) == RateLimitSignal(
        "quota", 0.25, 429, "HTTP 429 insufficient_quota"
    )


def test_a_urllib_http_error_429_is_rate_limited() -> None:
    headers = Message()
    headers["Retry-After"] = "3"
    exc = urllib.error.HTTPError("http://fake/", 429, "Too Many Requests", headers, None)
    try:
        assert rate_limit_signal(exc) == RateLimitSignal("rate_limited", 3.0, 429, "HTTP 429")
    finally:
        exc.close()


# --- chains -----------------------------------------------------------------------------------


class WrapperError(Exception):
    """A user's own error, raised over the SDK's."""


def raised_over(sdk_error: BaseException, *, chained: bool) -> WrapperError:
    """A WrapperError raised while handling ``sdk_error``: ``from`` it, or ``from None``."""
    try:
        try:
            raise sdk_error
        except Exception as exc:
            if chained:
                raise WrapperError("the agent step failed") from exc
            raise WrapperError("while handling it, another error") from None
    except WrapperError as outer:
        return outer
    raise AssertionError("unreachable")


def test_a_wrapper_raised_from_an_sdk_error_is_recognised() -> None:
    outer = raised_over(anthropic_error(529, anthropic_body("overloaded_error")), chained=True)
    assert isinstance(outer.__cause__, anthropic.OverloadedError)
    assert rate_limit_signal(outer) == RateLimitSignal(
        "overloaded", None, 529, "HTTP 529 overloaded_error"
    )


def test_an_sdk_error_in_the_implicit_context_is_recognised() -> None:
    """Even under ``from None``, which only hides the context from tracebacks."""
    outer = raised_over(openai_error(429, OPENAI_429, {"retry-after": "2"}), chained=False)
    assert outer.__cause__ is None
    assert isinstance(outer.__context__, openai.RateLimitError)
    signal = rate_limit_signal(outer)
    assert signal is not None
    assert signal.kind == "rate_limited"
    assert signal.retry_after == 2.0


def test_the_outermost_signal_wins() -> None:
    """A quota refusal wrapped over an older rate limit reads as quota."""
    outer = openai_error(429, OPENAI_QUOTA)
    outer.__cause__ = openai_error(429, OPENAI_429)
    signal = rate_limit_signal(outer)
    assert signal is not None
    assert signal.kind == "quota"


def test_a_member_of_an_exception_group_is_recognised() -> None:
    # Looked up, not named: the package supports 3.10, where there is none.
    group_type: Any = getattr(builtins, "ExceptionGroup", None)
    if group_type is None:
        pytest.skip("ExceptionGroup is new in 3.11")
    group = group_type("tasks", [ValueError("x"), openai_error(429, OPENAI_429)])
    signal = rate_limit_signal(group)
    assert signal is not None
    assert signal.kind == "rate_limited"


def test_a_cycle_of_causes_ends() -> None:
    first, second = WrapperError("a"), WrapperError("b")
    first.__cause__ = second
    second.__cause__ = first
    second.__context__ = first
    assert rate_limit_signal(first) is None


def test_a_signal_a_few_links_down_is_found_but_the_walk_is_bounded() -> None:
    def buried(depth: int) -> BaseException:
        exc: BaseException = openai_error(429, OPENAI_429)
        for level in range(depth):
            wrapper = WrapperError(f"level {level}")
            wrapper.__cause__ = exc
            exc = wrapper
        return exc

    assert rate_limit_signal(buried(4)) is not None
    assert rate_limit_signal(buried(50)) is None


# --- retry-after ------------------------------------------------------------------------------


def test_an_http_date_retry_after_is_measured_from_now() -> None:
    headers = {"retry-after": formatdate(NOW + 90, usegmt=True)}
    assert parse_retry_after(headers, now=NOW) == 90.0
    exc = httpx2_error(429, headers)
    signal = rate_limit_signal(exc, now=NOW)
    assert signal is not None
    assert signal.retry_after == 90.0


def test_an_http_date_already_past_means_retry_now() -> None:
    assert parse_retry_after({"retry-after": formatdate(NOW - 30, usegmt=True)}, now=NOW) == 0.0


def test_an_http_date_in_an_unknown_zone_is_read_as_utc() -> None:
    text = formatdate(NOW + 5).replace("+0000", "-0000")
    assert text.endswith("-0000")
    assert parse_retry_after({"retry-after": text}, now=NOW) == 5.0


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    assert parse_retry_after(headers, now=NOW) == 1.5
    signal = rate_limit_signal(openai_error(429, OPENAI_429, headers))
    assert signal is not None
    assert signal.retry_after == 1.5


def test_a_garbage_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "9"}, now=NOW) == 9.0


def test_a_fractional_retry_after_is_accepted() -> None:
    assert parse_retry_after({"retry-after": " 2.5 "}, now=NOW) == 2.5
    assert parse_retry_after({"retry-after-ms": "12.5"}, now=NOW) == 0.0125


@pytest.mark.parametrize(
    "value",
    [
        "soon",
        "-5",
        "-0.5",
        "nan",
        "NaN",
        "inf",
        "Infinity",
        "1e3",
        "",
        " ",
        "5 seconds",
        "0x10",
        "+3",
        "١٢",
        "1_000",
        "Thu, 32 Oct 2026 07:28:00 GMT",
        "9" * 65,
    ],
)
@pytest.mark.parametrize("name", ["retry-after", "retry-after-ms"])
def test_garbage_retry_after_values_are_ignored(name: str, value: str) -> None:
    assert parse_retry_after({name: value}, now=NOW) is None


def test_a_garbage_retry_after_still_leaves_the_rate_limit() -> None:
    signal = rate_limit_signal(openai_error(429, OPENAI_429, {"retry-after": "nan"}))
    assert signal == RateLimitSignal("rate_limited", None, 429, "HTTP 429 rate_limit_exceeded")


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "99999999"},
        {"retry-after-ms": "99999999999"},
        {"retry-after": "9" * 64},
        {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"},
    ],
)
def test_absurd_delays_are_cut_to_a_day(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, now=NOW) == MAX_RETRY_AFTER == 86_400.0


def test_headers_are_found_case_insensitively_in_a_plain_dict() -> None:
    assert parse_retry_after({"Retry-After": "4"}, now=NOW) == 4.0
    assert parse_retry_after({"RETRY-AFTER-MS": b"500"}, now=NOW) == 0.5


@pytest.mark.parametrize(
    "headers",
    [None, "retry-after: 5", ["retry-after", "5"], 5, {"retry-after": 5}, {"retry-after": ["5"]}],
)
def test_headers_of_the_wrong_shape_give_no_delay(headers: object) -> None:
    assert parse_retry_after(headers, now=NOW) is None


# --- hostile shapes ---------------------------------------------------------------------------


class BoomError(Exception):
    """What a hostile property raises."""


def _raises(self: object) -> object:
    raise BoomError("property")


def thing(name: str, base: type = object, /, **attrs: object) -> Any:
    """An instance of a fresh class whose attributes are ``attrs``; RAISE makes one raise."""
    namespace = {k: property(_raises) if v is RAISE else v for k, v in attrs.items()}
    return type(name, (base,), namespace)()


RAISE = object()


def test_properties_that_raise_are_read_as_absent() -> None:
    response = thing("Response", status_code=429, headers=RAISE, _content=RAISE)
    exc = thing("Odd", Exception, status_code=RAISE, body=RAISE, code=RAISE, response=response)
    assert rate_limit_signal(exc) == RateLimitSignal("rate_limited", None, 429, "HTTP 429")


def test_a_hostile_outer_layer_does_not_hide_the_cause() -> None:
    class HostileError(Exception):
        def __getattribute__(self, name: str) -> Any:
            if name in {"__cause__", "__context__", "__class__"}:
                return object.__getattribute__(self, name)
            raise BoomError(name)

    outer = HostileError()
    outer.__cause__ = openai_error(429, OPENAI_429)
    signal = rate_limit_signal(outer)
    assert signal is not None
    assert signal.kind == "rate_limited"


def test_headers_that_are_not_mappings_and_bodies_that_are_strings() -> None:
    response = thing("Response", status_code=429, headers="retry-after: 5", _content=b"\xff{")
    exc = thing("Odd", Exception, body="rate limited, slow down", code=429, response=response)
    assert rate_limit_signal(exc) == RateLimitSignal("rate_limited", None, 429, "HTTP 429")


def test_a_headers_get_that_raises_gives_no_delay() -> None:
    class Headers:
        def get(self, name: str) -> str:
            raise BoomError(name)

    assert parse_retry_after(Headers(), now=NOW) is None
    response = thing("Response", status_code=429, headers=Headers())
    exc = thing("Odd", Exception, response=response)
    assert rate_limit_signal(exc) == RateLimitSignal("rate_limited", None, 429, "HTTP 429")


@pytest.mark.parametrize("status", [True, 429.0, "429", -429, 10**6])
def test_a_status_that_is_not_an_http_status_is_ignored(status: object) -> None:
    assert rate_limit_signal(thing("Odd", Exception, status_code=status)) is None


def test_a_signal_survives_pickling() -> None:
    signal = RateLimitSignal("overloaded", 1.5, 529, "HTTP 529 overloaded_error")
    assert pickle.loads(pickle.dumps(signal)) == signal


MARKERS = [
    "rate_limit_error",
    "rate_limit_exceeded",
    "overloaded_error",
    "insufficient_quota",
    "billing_error",
    "enforced_spend_limit_reached",
    "error",
    "requests",
]
HEADER_VALUES = ["5", "1500", "nan", "-1", "1e309", "Wed, 21 Oct 2026 07:28:00 GMT", "9" * 70]
ATTRS = ["status_code", "status", "code", "type", "error_code", "body", "response", "headers"]
RESPONSE_ATTRS = ["status_code", "headers", "_content"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([200, 402, 429, 500, 529]),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(MARKERS + HEADER_VALUES),
    st.binary(max_size=12),
    st.just(b'{"error": {"code": "insufficient_quota"}}'),
    st.just(RAISE),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(
            st.sampled_from(
                [
                    "error",
                    "type",
                    "code",
                    "details",
                    "error_code",
                    "retry-after",
                    "Retry-After-Ms",
                    "message",
                ]
            )
            | st.text(max_size=4),
            children,
            max_size=4,
        ),
    ),
    max_leaves=10,
)


# Each attribute is anything at all half the time, and something close to real the other half,
# so that signals (and their delays) come out often enough to be checked too.
statuses = st.sampled_from([200, 402, 429, 500, 529])
header_maps = st.dictionaries(
    st.sampled_from(["retry-after", "Retry-After", "retry-after-ms"]),
    st.sampled_from(HEADER_VALUES) | st.text(max_size=8),
    max_size=3,
)
LIKELY = {
    "status_code": statuses,
    "status": statuses,
    "code": st.sampled_from(MARKERS),
    "type": st.sampled_from(MARKERS),
    "error_code": st.sampled_from(MARKERS),
    "headers": header_maps,
    "body": st.builds(anthropic_body, st.sampled_from(MARKERS)),
}


def _drawn_attrs(draw: st.DrawFn, names: list[str]) -> dict[str, object]:
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    return {name: draw(LIKELY.get(name, values) | values) for name in chosen}


@st.composite
def hostile_exceptions(draw: st.DrawFn) -> BaseException:
    """Exceptions with random attributes (some raising), random responses and random chains."""
    layers: list[BaseException] = []
    for _ in range(draw(st.integers(1, 4))):
        attrs = _drawn_attrs(draw, ATTRS)
        if draw(st.booleans()):  # a response shaped like one, with random contents
            attrs["response"] = thing("Response", **_drawn_attrs(draw, RESPONSE_ATTRS))
        layers.append(thing("Drawn", Exception, **attrs))
    for exc in layers:
        exc.__cause__ = draw(st.sampled_from([None, *layers]))
        exc.__context__ = draw(st.sampled_from([None, *layers]))
    return layers[0]


def _plausible(signal: RateLimitSignal | None) -> bool:
    if signal is None:
        return True
    return (
        signal.kind in {"rate_limited", "overloaded", "quota"}
        and (signal.retry_after is None or 0.0 <= signal.retry_after <= MAX_RETRY_AFTER)
        and (signal.status is None or 100 <= signal.status <= 999)
        and isinstance(signal.detail, str)
        and len(signal.detail) <= 80
    )


@given(hostile_exceptions(), st.floats(allow_nan=True, allow_infinity=True))
def test_any_exception_shape_gives_a_plausible_signal_or_none_and_never_raises(
    exc: BaseException, now: float
) -> None:
    assert _plausible(rate_limit_signal(exc, now=now))


@given(values, st.floats())
def test_parse_retry_after_never_raises_and_stays_within_a_day(headers: object, now: float) -> None:
    delay = parse_retry_after(headers, now=now)
    assert delay is None or (math.isfinite(delay) and 0.0 <= delay <= MAX_RETRY_AFTER)


# --- the module itself ------------------------------------------------------------------------


def test_the_module_imports_only_the_standard_library() -> None:
    """No SDK, no httpx: the module must stay importable and cheap without them."""
    import collet_limiter._ratelimit as module

    tree = ast.parse(Path(module.__file__ or "").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert imported
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
