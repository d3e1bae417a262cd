"""``collet-limiter stats``: what the history says about each model over a window of time.

The figures are ``Inspector.stats``'s (``collet_limiter._stats`` says what each one counts);
this module parses ``--since``, and prints them as a table or as the ``--json`` document that
docs/cli.md describes. The table fits in 100 columns for the usual keys: the acquisitions say
how they were granted in one cell (``12 (3 chain, 1 queue)``: the rest as asked), and the waits
share one (``p50/95/99/max``). A narrower terminal wraps the cells; a file or a pipe gets whole
rows (the command sets the width).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from rich import box
from rich.text import Text

from ._output import duration, iso
from ._tables import _table

if TYPE_CHECKING:
    from rich.console import RenderableType

    from collet_limiter import ModelStats, Stats

# The forms --since accepts, as its help and its error say them.
SINCE_FORMS: Final = "30s, 30m, 1h, 2d, or an ISO 8601 time such as 2026-12-03T11:00 (UTC if naive)"
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])", re.IGNORECASE)
_UNIT_SECS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The longest --since duration: a century reaches before any history already, and a few
# thousand would reach before year 1, which no datetime can hold.
MAX_SINCE: Final = timedelta(days=36500)
# The vias other than primary, in the order a cell lists them (``_stats.VIAS`` without primary).
_MOVED: Final = ("queue", "chain", "capability", "cli")


def parse_since(value: str) -> timedelta | datetime:
    """``30s``, ``30m``, ``1h``, ``2d`` (that long before now), or an ISO 8601 time (naive
    means UTC); ValueError naming the accepted forms otherwise."""
    text = value.strip()
    found = _DURATION.fullmatch(text)
    if found is not None:
        secs = float(found[1]) * _UNIT_SECS[found[2].lower()]
        if secs > MAX_SINCE.total_seconds():
            raise ValueError(f"{value!r} is longer than {MAX_SINCE.days} days: use {SINCE_FORMS}")
        return timedelta(seconds=secs)
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not read the Z suffix
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration or a time: use {SINCE_FORMS}") from None
    try:
        utc = (
            moment.astimezone(timezone.utc)
            if moment.tzinfo is not None
            else moment.replace(tzinfo=timezone.utc)
        )
    except OverflowError:  # 0001-01-01T00:00+01:00: before year 1 in UTC
        utc = None
    # Year 9999 is refused too: its last second, as a float timestamp, can round into 10000.
    if utc is None or utc.year == 9999:
        raise ValueError(f"{value!r} is out of range: use {SINCE_FORMS}")
    return utc


def _utc(moment: datetime) -> str:
    """``2026-12-03 11:00:00 UTC`` (``0001-01-01 ...`` too: strftime's %Y drops the zeros)."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "seconds") + " UTC"


def _days(days: float) -> str:
    return f"{days:g} day{'s' * (days != 1)}"


def span(length: timedelta) -> str:
    """A --since duration as it would be written: ``2d``, ``1h``, ``30m``, ``90s``."""
    secs = length.total_seconds()
    for unit in ("d", "h", "m"):
        count = secs / _UNIT_SECS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{secs:g}s"


def window_line(stats: Stats, *, asked: datetime | timedelta | None, history_days: float) -> str:
    """``since 2026-12-03 11:00:00 UTC (1h)``, or ``all history kept (7 days)``; with a note
    when the window reaches back further than the history is kept."""
    if stats.since is None:
        return f"all history kept ({_days(history_days)})"
    line = f"since {_utc(stats.since)}"
    if isinstance(asked, timedelta):
        line += f" ({span(asked)})"
    if stats.now - stats.since > timedelta(days=history_days):
        line += f"; the history keeps {_days(history_days)}, older events are pruned"
    return line


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def waits_text(figures: ModelStats) -> str:
    """``0.4/12/40/120``: the wait's p50, p95, p99 and max in ms; ``-`` with no acquisition."""
    if figures.wait_max_ms is None:
        return "-"
    waits = (figures.wait_p50_ms, figures.wait_p95_ms, figures.wait_p99_ms, figures.wait_max_ms)
    return "/".join(_ms(wait) for wait in waits)


def acquired_text(figures: ModelStats) -> str:
    """``12 (3 chain, 1 queue)``: the acquisitions, and those not granted as asked by how."""
    moved = [f"{figures.by_via.get(via, 0)} {via}" for via in _MOVED if figures.by_via.get(via)]
    return f"{figures.acquisitions}" + (f" ({', '.join(moved)})" if moved else "")


# The table's columns: (header, justify). The waits share one cell, headers take two lines and
# the columns are two spaces apart, so that a dozen figures fit in 100 columns.
_COLUMNS: Final = (
    ("model", "left"),
    ("acquired", "left"),
    ("wait ms\np50/95/99/max", "right"),
    ("timed\nout", "right"),
    ("reclaims", "right"),
    ("lost", "right"),
    ("429s", "right"),
    ("cooling", "right"),
    ("peak", "right"),
)


def stats_table(stats: Stats, *, total: bool = True) -> RenderableType:
    """One row per model, and the total as the footer (``total``: left out for a single model
    asked for, whose figures it repeats)."""
    table = _table()
    table.box = box.SIMPLE  # SIMPLE_HEAD's look, and a rule above the footer
    table.padding = (0, 1, 0, 0)
    table.show_footer = total
    footer = _cells(stats.total)
    for (name, justify), foot in zip(_COLUMNS, footer, strict=True):
        # In a narrow terminal every column wraps (a number folds), so that none vanishes.
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold",
            footer=foot,
            footer_style="bold",
        )
    for figures in stats.models:
        table.add_row(*_cells(figures))
    return table


def _cells(figures: ModelStats) -> list[RenderableType]:
    refused = figures.rate_limited
    return [
        "total" if figures.key is None else str(figures.key),
        acquired_text(figures),
        waits_text(figures),
        str(figures.timeouts),
        str(figures.reclaims),
        Text(str(figures.lost), style="bold red" if figures.lost else ""),
        Text(str(refused), style="yellow" if refused else ""),
        duration(figures.cooling_secs) if figures.cooling_secs else "0",
        str(figures.peak_holders),
    ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def figures_data(figures: ModelStats) -> dict[str, Any]:
    """One model (or the total: ``key``, ``provider`` and ``model`` null) of ``stats --json``."""
    key = figures.key
    return {
        "key": None if key is None else str(key),
        "provider": None if key is None else key.provider,
        "model": None if key is None else key.model,
        "acquisitions": figures.acquisitions,
        "by_via": {via: figures.by_via.get(via, 0) for via in ("primary", *_MOVED)},
        "wait_p50_ms": _rounded(figures.wait_p50_ms),
        "wait_p95_ms": _rounded(figures.wait_p95_ms),
        "wait_p99_ms": _rounded(figures.wait_p99_ms),
        "wait_max_ms": _rounded(figures.wait_max_ms),
        "queued": figures.queued,
        "timeouts": figures.timeouts,
        "cancellations": figures.cancellations,
        "reclaims": figures.reclaims,
        "lost": figures.lost,
        "rate_limited": figures.rate_limited,
        "cooling_secs": round(figures.cooling_secs, 3),
        "peak_holders": figures.peak_holders,
    }


def stats_data(stats: Stats, *, db: str, history_days: float) -> dict[str, Any]:
    """``stats --json``."""
    return {
        "db": db,
        "exists": stats.exists,
        "since": None if stats.since is None else iso(stats.since),
        "now": iso(stats.now),
        "history_days": history_days,
        "models": [figures_data(figures) for figures in stats.models],
        "total": figures_data(stats.total),
    }
