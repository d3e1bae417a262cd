"""An independent observer: replays every holder's own events and counts concurrent holders.

Each holder writes ``<monotonic ns> + <key>`` right after its acquire returns and
``<monotonic ns> - <key>`` right before it releases, to its own file. CLOCK_MONOTONIC is one
clock for every process on the host, and each recorded interval lies inside the lease's real
lifetime (grant commit to release commit), so if the recorded intervals overlap more than a limit
allows, the leases did too. Nothing here reads the limiter's tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path


@dataclass
class Observation:
    """Peak concurrent holders per key and in total, and the events counted."""

    peak: Counter[str] = field(default_factory=Counter)
    peak_total: int = 0
    enters: int = 0
    exits: int = 0
    via: Counter[str] = field(default_factory=Counter)


def parse(lines: Iterable[str]) -> list[tuple[int, int, str, str]]:
    """(ns, +1/-1, key, via) for each well-formed line."""
    events = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "+-":
            events.append(
                (
                    int(parts[0]),
                    1 if parts[1] == "+" else -1,
                    parts[2],
                    parts[3] if len(parts) > 3 else "",
                )
            )
    return events


def observe(events: Iterable[tuple[int, int, str, str]]) -> Observation:
    """Sweep the events in time order (exits first on a tie) and record the peaks."""
    result = Observation()
    now: Counter[str] = Counter()
    total = 0
    for _, delta, key, via in sorted(events, key=lambda e: (e[0], e[1])):
        now[key] += delta
        total += delta
        if delta > 0:
            result.enters += 1
            result.via[via] += 1
            result.peak[key] = max(result.peak[key], now[key])
            result.peak_total = max(result.peak_total, total)
        else:
            result.exits += 1
    return result


def observe_files(paths: Iterable[Path]) -> Observation:
    """Merge every holder's events file and observe them."""
    events = []
    for path in paths:
        events += parse(path.read_text().splitlines())
    return observe(events)
