"""``collet-limiter metrics``: the limiter's state in the Prometheus text exposition format.

Printed once (for node_exporter's textfile collector) or served on 127.0.0.1 (``--serve``), a
fresh read per scrape. The format is the official ``prometheus_client``'s: a collector that
reads through ``Inspector`` (so it creates and writes nothing), on a private registry (so none of
the library's default process metrics get mixed in), rendered by ``generate_latest``.

prometheus_client is an optional extra (``collet-limiter[metrics]``): this module imports it at
the top, and the command imports this module only when it runs, so neither the library nor the
other commands ever load it.

The gauges are a reading of the database as it is now. The counters are read from its history
(``Inspector.event_counts``: every event ever written, pruned ones included, so they never go
down). Nothing here counts between scrapes, because one ``metrics`` process cannot see what
happened between two of its reads: every figure comes from the database.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from collet_limiter import LimiterError
from collet_limiter._cooldown import KINDS
from collet_limiter._fallback import Via

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import FrameType

    from _typeshed.wsgi import StartResponse, WSGIEnvironment  # wsgiref.types is 3.11+
    from prometheus_client.metrics_core import Metric

    from collet_limiter import Inspector, LeaseInfo, Status, TicketInfo

PREFIX: Final = "collet_limiter_"
LABELS: Final = ("provider", "model")
HOST: Final = "127.0.0.1"  # loopback only: the state names models and holders; no --bind on purpose
PATH: Final = "/metrics"
# The cooldown kinds the library reports (README, "When the provider says 429"). Each model gets
# a series for every one of them, 0 or 1, so that a series does not appear and vanish as
# cooldowns come and go; a kind not listed (written by a newer library) is added when it shows up.
COOLDOWN_KINDS: Final = KINDS
# How a lease can be granted (the library's one list), for the acquisitions counter's via label.
VIAS: Final = get_args(Via)
# The lease endings that count as an acquisition: a lease counts once, when it ends. A
# ``discarded`` lease was granted to an acquire that had given up (its caller never had it).
ACQUIRED: Final = ("released", "reclaimed")
# A count of the history: (kind, provider, model, via, count), '' where an event has none.
Count = tuple[str, str, str, str, int]
# A scrape's client that connects and then says nothing is dropped after this long, so that it
# cannot hold up the (one-at-a-time) server; a real scrape sends its request at once.
REQUEST_TIMEOUT_SECS: Final = 10.0

logger = logging.getLogger("collet_limiter.cli.metrics")


@dataclass(frozen=True, slots=True)
class Reading:
    """What one scrape reads: the status, the leases and the queue, and the database's time."""

    status: Status
    leases: list[LeaseInfo]
    waiters: list[TicketInfo]
    now: float  # the database's clock (the server's, on PostgreSQL), seconds since the epoch
    exists: bool
    counts: tuple[Count, ...] = ()  # the history's counts (Inspector.event_counts)

    @classmethod
    def of(cls, inspector: Inspector) -> Reading:
        """Read everything now (separate read transactions, as ``status`` and ``leases`` do)."""
        status = inspector.status()
        exists = inspector.exists  # as the status read found it
        return cls(
            status=status,
            leases=inspector.leases(),
            waiters=inspector.waiters(),
            now=inspector.now(),
            exists=exists,
            counts=tuple(inspector.event_counts()),
        )


def _gauge(name: str, documentation: str, value: float | None = None) -> GaugeMetricFamily:
    if value is None:
        return GaugeMetricFamily(PREFIX + name, documentation, labels=LABELS)
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _seconds(value: float) -> float:
    """A duration to the millisecond (as the ``--json`` documents give them), never negative."""
    return round(max(0.0, value), 3)


def families(reading: Reading) -> list[Metric]:
    """The metric families of one reading, in the order docs/cli.md lists them."""
    status, now = reading.status, reading.now
    limit = _gauge(
        "model_limit",
        "Concurrency limit configured for the model (as the database holds it: the last config "
        "written).",
    )
    effective = _gauge(
        "model_effective_limit",
        "Concurrency limit in force for the model: model_limit, or lower while [limiter] "
        "adaptive has lowered it after a refusal (it climbs back by one per "
        "adaptive_recover_secs).",
    )
    in_use = _gauge("model_in_use", "Leases held on the model.")
    waiting = _gauge("model_waiting", "Waiters queued in the fair queue for the model.")
    cooling = _gauge(
        "model_cooling_down",
        "1 while the model cools down after a reported refusal (429, overload, quota, exit code) "
        "and takes no new lease, in any process; else 0.",
    )
    left = _gauge(
        "model_cooldown_seconds_left",
        "Seconds until the model's cooldown ends; 0 when it is not cooling down.",
    )
    kinds = GaugeMetricFamily(
        PREFIX + "model_cooldown_kind",
        "1 for the kind of the model's cooldown in progress (rate_limited, overloaded, quota, "
        "exit_code), 0 for the other kinds; all 0 when it is not cooling down.",
        labels=(*LABELS, "kind"),
    )
    for model in status.models:
        labels = [model.key.provider, model.key.model]
        limit.add_metric(labels, model.limit)
        effective.add_metric(labels, model.effective_limit)
        in_use.add_metric(labels, model.in_use)
        waiting.add_metric(labels, model.waiting)
        cools = model.cooldown_until is not None
        cooling.add_metric(labels, int(cools))
        left.add_metric(labels, _seconds(model.cooldown_left) if cools else 0.0)
        current = model.cooldown_kind if cools else None
        extra = () if current is None or current in COOLDOWN_KINDS else (current,)
        for kind in (*COOLDOWN_KINDS, *extra):
            kinds.add_metric([*labels, kind], int(kind == current))

    enqueued = [ticket.enqueued_at.timestamp() for ticket in reading.waiters]
    acquired = [lease.acquired_at.timestamp() for lease in reading.leases]
    expired = sum(1 for lease in reading.leases if lease.expires_at.timestamp() < now)
    return [
        limit,
        effective,
        in_use,
        waiting,
        cooling,
        left,
        kinds,
        _gauge(
            "max_agents",
            "Global cap: leases that may be held at once over all models ([collaboration] "
            "max_agents, as the database holds it).",
            status.max_agents,
        ),
        _gauge("in_use", "Leases held, all models.", status.in_use),
        _gauge("waiting", "Waiters queued, all models.", status.waiting),
        _gauge(
            "database_exists",
            "1 when the limiter database exists; 0 before anything has run (the models are then "
            "the config's, with nothing in use).",
            int(reading.exists),
        ),
        _gauge(
            "oldest_waiter_seconds",
            "Seconds the longest-waiting queued waiter has waited; 0 when nobody waits.",
            _seconds(now - min(enqueued)) if enqueued else 0.0,
        ),
        _gauge(
            "oldest_lease_seconds",
            "Seconds since the oldest lease held was granted; 0 when none is held.",
            _seconds(now - min(acquired)) if acquired else 0.0,
        ),
        _gauge(
            "expired_leases",
            "Leases past their expiry (not renewed for the lease TTL: the holder hung or died); "
            "the next acquire that needs the slot, or reap, removes them.",
            expired,
        ),
        *counters(reading),
    ]


def counters(reading: Reading) -> list[Metric]:
    """The counters, from the history's counts (kept and pruned events: they never go down).

    ``events_total`` has a series per (kind, provider, model, via) that has happened. The two
    convenience counters also have a 0 for every model ``status`` lists (and, for acquisitions,
    every via), so that a model's first acquisition or refusal is an increase that ``rate()``
    sees, not the first sample of a new series.
    """
    events = CounterMetricFamily(
        PREFIX + "events",
        "Events in the limiter's history, pruned ones included, by kind (released, reclaimed, "
        "discarded, lost, queued, timed_out, cancelled, fell_back, rate_limited, "
        "cooldown_started, cooldown_ended, limit_changed), provider, model and via (empty where "
        "an event has none).",
        labels=("kind", *LABELS, "via"),
    )
    acquired = {
        (model.key.provider, model.key.model, via): 0
        for model in reading.status.models
        for via in VIAS
    }
    refused = {(model.key.provider, model.key.model): 0 for model in reading.status.models}
    for kind, provider, model, via, count in reading.counts:
        events.add_metric([kind, provider, model, via], count)
        if kind in ACQUIRED and via:  # a reclaimed ticket (no via) was never a lease
            key = (provider, model, via)
            acquired[key] = acquired.get(key, 0) + count
        elif kind == "rate_limited":
            refused[provider, model] = refused.get((provider, model), 0) + count
    acquisitions = CounterMetricFamily(
        PREFIX + "acquisitions",
        "Leases granted on the model, by how (via: primary, queue, chain, capability, cli); a "
        "lease counts when it ends (released, or reclaimed after its holder died or stalled), "
        "so the leases held now are not counted yet.",
        labels=(*LABELS, "via"),
    )
    for (provider, model, via), count in acquired.items():
        acquisitions.add_metric([provider, model, via], count)
    rate_limited = CounterMetricFamily(
        PREFIX + "rate_limited",
        "Refusals reported on the model, every kind together (a 429, an overload, a quota "
        "refusal, an exit code of run --cooldown-on-exit): each one cools the model down.",
        labels=LABELS,
    )
    for (provider, model), count in refused.items():
        rate_limited.add_metric([provider, model], count)
    return [events, acquisitions, rate_limited]


class StateCollector(Collector):
    """Reads the database at each collection (each scrape) through an ``Inspector``."""

    def __init__(self, inspector: Inspector) -> None:
        self._inspector = inspector

    def collect(self) -> Iterable[Metric]:
        """The metric families of a fresh reading."""
        return families(Reading.of(self._inspector))


def registry_for(inspector: Inspector) -> CollectorRegistry:
    """A private registry holding only the limiter's state (no process or GC metrics)."""
    registry = CollectorRegistry(auto_describe=False)  # registering must not read the database
    registry.register(StateCollector(inspector))
    return registry


def exposition(inspector: Inspector) -> str:
    """The state now, in the Prometheus text format."""
    return generate_latest(registry_for(inspector)).decode()


class _Scrapes:
    """The WSGI app: ``GET /metrics`` reads afresh; a failed read is a 503 and one log line."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._failing: str | None = None  # the last failure's message, logged once

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return _reply(start_response, "404 Not Found", f"not found: try {PATH}\n")
        if environ.get("REQUEST_METHOD") != "GET":
            return _reply(start_response, "405 Method Not Allowed", "use GET\n")
        try:
            body = generate_latest(self._registry)
        except LimiterError as exc:  # a database error: Prometheus marks the target down
            return self._failed(start_response, "503 Service Unavailable", str(exc))
        except Exception as exc:  # a bug: answer 500, say so, and keep serving
            logger.debug("metrics: the scrape failed", exc_info=True)  # -vv: the traceback
            message = f"internal error: {type(exc).__name__}: {exc} (a bug: please report it)"
            return self._failed(start_response, "500 Internal Server Error", message)
        if self._failing is not None:
            logger.warning("metrics: reading the database works again")
            self._failing = None
        headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [body]

    def _failed(self, start_response: StartResponse, status: str, message: str) -> list[bytes]:
        if message != self._failing:  # once per failure, not once per scrape
            logger.error("metrics: %s", message)
            self._failing = message
        return _reply(start_response, status, message + "\n")


def _reply(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (one line per scrape would bury the errors); a time limit."""

    timeout = REQUEST_TIMEOUT_SECS

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Access lines go to the debug log only (-vv)."""
        logger.debug("metrics: %s %s", self.address_string(), format % args)


class PortUnavailableError(Exception):
    """The port cannot be listened on (in use, or privileged)."""


def listen(port: int, inspector: Inspector) -> WSGIServer:
    """A server on 127.0.0.1:``port`` (0: any free port) answering scrapes; not serving yet."""
    try:
        return make_server(HOST, port, _Scrapes(registry_for(inspector)), WSGIServer, _QuietHandler)
    except OSError as exc:
        raise PortUnavailableError(
            f"cannot listen on {HOST}:{port}: {exc.strerror or exc}; choose another port"
        ) from exc


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM set while the block runs; the previous handlers after."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve(server: WSGIServer, *, announce: Callable[[str], None]) -> int:
    """Answer scrapes until SIGINT or SIGTERM; then stop serving and return 0."""
    with _stopped_by_signals() as stop:
        thread = threading.Thread(
            target=server.serve_forever, name="collet-limiter-metrics", daemon=True
        )
        thread.start()
        try:
            announce(f"serving metrics on http://{HOST}:{server.server_port}{PATH}")
            # The handlers run on this (the main) thread, which wait() leaves to run them.
            stop.wait()
        finally:
            server.shutdown()  # lets a scrape in progress finish
            thread.join()
            server.server_close()
    return 0
