"""Recognise a provider's rate-limit refusal in an exception, without importing any SDK.

``rate_limit_signal(exc)`` reads what the official ``openai`` and ``anthropic`` SDKs, httpx (or
httpx2) ``HTTPStatusError``, ``urllib.error.HTTPError`` and aiohttp's ``ClientResponseError`` put
on their exceptions, by attribute name only, and says whether the provider refused the call for
load:

- ``"rate_limited"``: HTTP 429, or a body that says ``rate_limit_error`` / ``rate_limit_exceeded``;
- ``"overloaded"``: HTTP 529 (Anthropic's ``OverloadedError``), or an ``overloaded_error`` body on
  any status (the Anthropic SDK raises one with status 200 when the error arrives mid-stream);
- ``"quota"``: a hard refusal that waiting a few seconds will not fix: HTTP 402, or an
  ``insufficient_quota`` / ``billing_*`` / ``*_spend_limit_reached`` code on a status below 500
  (OpenAI sends ``billing_hard_limit_reached`` with 400, ``insufficient_quota`` with 429).

Where the fields live (read from the SDK sources, openai 3.57 and anthropic 2.16):

- openai ``APIStatusError``: ``status_code``, ``response.headers``; ``body`` is the *inner*
  ``error`` object (``{"code": ..., "type": ...}``), also copied to ``.code`` and ``.type``. A
  mid-stream error is a bare ``APIError`` with that body and no status.
- anthropic ``APIStatusError``: ``status_code``, ``response.headers``; ``body`` is the whole
  document (``{"type": "error", "error": {"type": ..., "details": {"error_code": ...}}}``),
  ``.type`` is ``error.type`` and ``.error_code`` is ``error.details.error_code``.
- httpx ``HTTPStatusError``: ``response.status_code``, ``response.headers`` and, when the body was
  read, its bytes.

The exception's ``__cause__`` and ``__context__`` (and an exception group's members) are followed
a few links, so a wrapper raised ``from`` the SDK's error is recognised too.

Not guaranteed: this is a reading of what providers send today. A refusal worded only in the
message (Anthropic's "credit balance is too low" arrives as a plain 400 ``invalid_request_error``)
is not recognised, and a code this module does not know on a 429 reads as ``"rate_limited"``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator

Kind = Literal["rate_limited", "overloaded", "quota"]

# A provider asking for more than a day is not a back-off any more; a caller planning around
# the figure gets at most this. (The SDKs cap theirs near 50 days only because time.sleep does.)
MAX_RETRY_AFTER: Final = 86_400.0

# Exceptions inspected per call, counting the first: enough for an SDK error inside a wrapper
# inside a task group, and a bound whatever the chain looks like.
_MAX_LINKS: Final = 8
# Header entries scanned for a case-insensitive match in a plain dict.
_MAX_HEADER_ITEMS: Final = 256
# A buffered body larger than this is not parsed (error documents are a few hundred bytes).
_MAX_BODY_BYTES: Final = 65_536
# Header values longer than this are garbage, not a delay.
_MAX_HEADER_VALUE: Final = 64

_NUMBER: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MARKER: Final = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")

_RATE_MARKERS: Final = frozenset({"rate_limit_error", "rate_limit_exceeded"})
_OVERLOADED_MARKER: Final = "overloaded_error"
_QUOTA_MARKERS: Final = frozenset(
    {
        "insufficient_quota",  # OpenAI, on a 429
        # Anthropic: 429 and 402 error codes under error.details.error_code
        "contract_spend_limit_reached",
        "enforced_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
    }
)
# Anthropic's error type "billing_error"; OpenAI's "billing_hard_limit_reached" and the like.
_QUOTA_PREFIX: Final = "billing_"
_HTTP_PAYMENT_REQUIRED: Final = 402
_HTTP_TOO_MANY_REQUESTS: Final = 429
_HTTP_OVERLOADED: Final = 529  # Anthropic's own status for "overloaded"
_HTTP_SERVER_ERROR: Final = 500


@dataclass(frozen=True, slots=True)
class RateLimitSignal:
    """A provider's refusal for load or quota, as read from an exception.

    ``retry_after`` is the delay in seconds the provider asked for (at most a day), or None when it
    gave none; ``status`` is the HTTP status seen, None for an error that arrived mid-stream
    without one; ``detail`` is short text for logs, such as ``"HTTP 429 rate_limit_exceeded"``.
    """

    kind: Kind
    retry_after: float | None
    status: int | None
    detail: str


def rate_limit_signal(exc: BaseException, *, now: float | None = None) -> RateLimitSignal | None:
    """Return what ``exc`` (or an exception it was raised from) says about a rate limit, or None.

    ``now`` is the wall-clock time an HTTP-date ``retry-after`` is measured from (default
    ``time.time()``). Never raises an ``Exception``: an attribute that raises one, or headers
    and bodies of an unexpected shape, count as absent (a ``KeyboardInterrupt`` still passes).
    """
    try:
        for layer in _chain(exc):
            try:
                found = _signal_of(layer, now)
            except Exception:  # noqa: BLE001, S112 - a hostile attribute hides this layer only
                continue
            if found is not None:
                return found
    except Exception:  # noqa: BLE001 - reading an error must never raise one of its own
        return None
    return None


def parse_retry_after(headers: object, *, now: float) -> float | None:
    """Seconds to wait from response headers, or None when they give no usable delay.

    ``headers`` is anything with a ``get`` method (httpx's case-insensitive ``Headers``, a dict,
    an ``email.message.Message``). ``retry-after-ms`` (milliseconds, the OpenAI and Anthropic
    SDKs' extension) wins over ``retry-after``, read as seconds or as an HTTP date measured from
    ``now`` (a date already past gives 0.0). Negative, non-numeric, NaN and infinite values are
    ignored; a delay longer than a day is cut to a day. Never raises.
    """
    try:
        millis = _seconds(_header(headers, "retry-after-ms"))
        if millis is not None:
            return min(millis / 1000.0, MAX_RETRY_AFTER)
        text = _header(headers, "retry-after")
        if text is None:
            return None
        seconds = _seconds(text)
        if seconds is None:
            seconds = _seconds_until(text, now)
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER)
    except Exception:  # noqa: BLE001 - a broken headers object means no delay, not an error
        return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes, contexts and group members, breadth first, each once."""
    seen: set[int] = set()
    queue: deque[object] = deque([exc])
    while queue and len(seen) < _MAX_LINKS:
        current = queue.popleft()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        queue.append(_attr(current, "__cause__"))
        queue.append(_attr(current, "__context__"))
        members = _attr(current, "exceptions")  # BaseExceptionGroup, without naming it (3.10)
        if isinstance(members, tuple):
            queue.extend(members[:_MAX_LINKS])


def _signal_of(exc: BaseException, now: float | None) -> RateLimitSignal | None:
    response = _attr(exc, "response")
    status = _status(exc, response)
    markers = _markers(exc, response)
    classified = _classify(status, markers)
    if classified is None:
        return None
    kind, marker = classified
    headers = _attr(response, "headers")
    if headers is None:
        headers = _attr(exc, "headers")  # urllib's HTTPError, aiohttp's ClientResponseError
    retry_after = parse_retry_after(headers, now=time.time() if now is None else now)
    parts = ([] if status is None else [f"HTTP {status}"]) + ([] if marker is None else [marker])
    return RateLimitSignal(kind, retry_after, status, " ".join(parts))


def _classify(status: int | None, markers: list[str]) -> tuple[Kind, str | None] | None:
    """The kind of refusal, and the marker to name in the detail."""
    first = markers[0] if markers else None
    if status is None or status < _HTTP_SERVER_ERROR:
        quota = next((m for m in markers if _is_quota(m)), None)
        if quota is not None:
            return "quota", quota
        if status == _HTTP_PAYMENT_REQUIRED:
            return "quota", first
    if status == _HTTP_OVERLOADED or _OVERLOADED_MARKER in markers:
        return "overloaded", _OVERLOADED_MARKER if _OVERLOADED_MARKER in markers else first
    if status == _HTTP_TOO_MANY_REQUESTS or any(m in _RATE_MARKERS for m in markers):
        return "rate_limited", first
    return None


def _is_quota(marker: str) -> bool:
    return marker in _QUOTA_MARKERS or marker.startswith(_QUOTA_PREFIX)


def _status(exc: BaseException, response: object) -> int | None:
    # status_code: the SDKs' APIStatusError; response.status_code: httpx's HTTPStatusError;
    # status: urllib's HTTPError and aiohttp's ClientResponseError.
    for value in (_attr(exc, "status_code"), _attr(response, "status_code"), _attr(exc, "status")):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 999:
            return int(value)
    return None


def _markers(exc: BaseException, response: object) -> list[str]:
    """Error codes and types, most specific first: details' error_code, then code, then type."""
    body = _attr(exc, "body")
    if not isinstance(body, Mapping):
        body = _buffered_json(response)
    error = _item(body, "error")
    candidates = [
        _attr(exc, "error_code"),
        _item(_item(error, "details"), "error_code"),
        _item(_item(body, "details"), "error_code"),
        _attr(exc, "code"),
        _item(error, "code"),
        _item(body, "code"),
        _attr(exc, "type"),
        _item(error, "type"),
        _item(body, "type"),
        error,  # {"error": "rate_limit_exceeded"} from some OpenAI-compatible servers
    ]
    markers: list[str] = []
    for candidate in candidates:
        if not isinstance(candidate, str):
            continue
        marker = candidate.strip().lower()
        # Anthropic's document says "type": "error" at the top, which names nothing.
        if marker != "error" and _MARKER.fullmatch(marker) and marker not in markers:
            markers.append(marker)
    return markers


def _buffered_json(response: object) -> object:
    """The response's JSON document if its body is already in memory, else None.

    httpx, httpx2 and requests keep a read body in ``_content``; the public ``content`` would read
    the network for a streamed response (requests) and classifying an error must not do I/O.
    """
    content = _attr(response, "_content")
    if not isinstance(content, (bytes, bytearray)) or len(content) > _MAX_BODY_BYTES:
        return None
    try:
        return json.loads(content)
    except ValueError:  # not JSON, or not text
        return None


def _header(headers: object, name: str) -> str | None:
    """One header's value, case-insensitively; None when absent or not text."""
    get = _attr(headers, "get")
    value = get(name) if callable(get) else None
    if value is None and isinstance(headers, Mapping):
        # A plain dict is case-sensitive; httpx's Headers and the others found it above.
        for key, item in islice(headers.items(), _MAX_HEADER_ITEMS):
            if isinstance(key, str) and key.lower() == name:
                value = item
                break
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str) or len(value) > _MAX_HEADER_VALUE:
        return None
    return value.strip()


def _seconds(text: str | None) -> float | None:
    """A non-negative decimal number of seconds (or milliseconds), or None."""
    if text is None or not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    # The pattern and the length cap keep this finite today; the check keeps inf out if either
    # is ever relaxed.
    return value if math.isfinite(value) else None


def _seconds_until(text: str, now: float) -> float | None:
    """Seconds from ``now`` to an HTTP date (RFC 7231 IMF-fixdate and its obsolete forms)."""
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # not a date
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, but the sender does not know its zone"
        when = when.replace(tzinfo=timezone.utc)
    delay = when.timestamp() - now
    if not math.isfinite(delay):
        return None
    return max(delay, 0.0)


def _attr(obj: object, name: str) -> object:
    """``getattr`` that reads anything that fails, a raising property included, as absent."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a property may raise anything; it just has no value
        return None


def _item(obj: object, key: str) -> object:
    """``obj[key]`` for a mapping, else None."""
    if not isinstance(obj, Mapping):
        return None
    try:
        return obj.get(key)
    except Exception:  # noqa: BLE001 - a hostile mapping has no value for us
        return None
