"""Tables for people, drawn with rich: status, leases, waiters, explain, and the live view.

Imported only by the commands that draw (status, leases, explain, watch, demo), never by ``run``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ._output import cooldown_text, duration, limit_text, missing_line, status_line

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import RenderableType

    from collet_limiter import Explanation, Inspector, LeaseInfo, Status, TicketInfo


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); plain text, no colour codes, when it is not a terminal."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def status_table(status: Status) -> RenderableType:
    """Each model's limit, use and queue, with the global cap in the title.

    The limit column shows the limit in force, ``2 (of 3)`` when an adaptive limit is lower than
    the configured one; a cooldown column (time left, kind, reason) appears only while a model
    is cooling down, so the usual table stays narrow.
    """
    cooling = sum(model.cooldown_until is not None for model in status.models)
    title = f"global cap {status.in_use}/{status.max_agents} in use, {status.waiting} waiting"
    table = _table(title + (f", {cooling} cooling down" if cooling else ""))
    columns = [
        ("model", "left"),
        ("in use", "right"),
        ("limit", "right"),
        ("waiting", "right"),
        ("tier", "left"),
        ("tools", "left"),
        ("kind", "left"),
    ]
    if cooling:
        columns.append(("cooldown", "left"))
    for name, justify in columns:
        # A cooldown's reason may be long: it alone wraps, so the other cells stay whole.
        no_wrap = bool(cooling) and name != "cooldown"
        table.add_column(name, justify=justify, no_wrap=no_wrap)  # type: ignore[arg-type]
    for model in status.models:
        full = model.in_use >= model.effective_limit
        lowered = model.effective_limit < model.limit
        cells: list[RenderableType] = [
            str(model.key) + ("" if model.configured else " *"),
            Text(str(model.in_use), style="bold red" if full else "green"),
            Text(limit_text(model), style="yellow" if lowered else ""),
            Text(str(model.waiting), style="yellow" if model.waiting else ""),
            model.cost_tier.value,
            _yes_no(model.supports_tool_use),
            "cli" if model.is_cli else "api",
        ]
        if cooling:
            cells.append(Text(cooldown_text(model), style="bold yellow"))
        table.add_row(*cells)
    if any(not model.configured for model in status.models):
        note = Text("* not in the config's providers: added when first requested", style="dim")
        return Group(table, note)
    return table


def _via(lease: LeaseInfo) -> str:
    if lease.via in ("primary", "queue"):
        return lease.via
    return f"{lease.via} from {lease.primary}"


def _alive(value: bool | None) -> Text:
    if value is None:
        return Text("?", style="dim")
    return Text("yes", style="green") if value else Text("NO", style="bold red")


def leases_table(leases: Sequence[LeaseInfo], *, now: float) -> Table:
    """Every lease: key, how it was granted, holder, process, age and expiry."""
    table = _table(f"{len(leases)} lease{'s' * (len(leases) != 1)}")
    for name, justify in (
        ("id", "right"),
        ("model", "left"),
        ("via", "left"),
        ("holder", "left"),
        ("pid", "right"),
        ("host", "left"),
        ("age", "right"),
        ("expires in", "right"),
        ("alive", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for lease in leases:
        left = lease.expires_at.timestamp() - now
        table.add_row(
            str(lease.id),
            str(lease.key),
            _via(lease),
            lease.holder or "",
            str(lease.pid),
            lease.host,
            duration(now - lease.acquired_at.timestamp()),
            duration(left) if left >= 0 else Text("expired", style="bold red"),
            _alive(lease.holder_alive),
        )
    return table


def waiters_table(waiters: Sequence[TicketInfo], *, now: float) -> Table:
    """The queue, in the order it will be served."""
    table = _table(f"{len(waiters)} waiting, first served first")
    for name, justify in (
        ("ticket", "right"),
        ("model", "left"),
        ("holder", "left"),
        ("pid", "right"),
        ("host", "left"),
        ("waited", "right"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for ticket in waiters:
        table.add_row(
            str(ticket.id),
            str(ticket.key),
            ticket.holder or "",
            str(ticket.pid),
            ticket.host,
            duration(now - ticket.enqueued_at.timestamp()),
        )
    return table


def explain_table(explanation: Explanation) -> Table:
    """The candidates in the order they would be tried, each with its verdict and reason."""
    table = _table(f"candidates for {explanation.primary}, in order ({explanation.global_reason})")
    for name, justify in (
        ("#", "right"),
        ("model", "left"),
        ("via", "left"),
        ("eligible", "left"),
        ("room", "left"),
        ("reason", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    choice = explanation.choice
    for index, candidate in enumerate(explanation.candidates, start=1):
        style = "bold green" if candidate is choice else ("dim" if not candidate.eligible else "")
        table.add_row(
            str(index),
            str(candidate.key),
            candidate.via,
            _yes_no(candidate.eligible),
            _yes_no(candidate.has_room),
            candidate.reason,
            style=style,
        )
    return table


def explain_verdict(explanation: Explanation) -> str:
    """What an acquire would do now, in one sentence."""
    choice = explanation.choice
    if choice is None:
        # The primary's own verdict says why (it names the global cap when that is what blocks).
        first = explanation.candidates[0] if explanation.candidates else None
        reason = first.reason if first is not None else explanation.global_reason
        return f"would queue for {explanation.primary} ({reason})"
    if choice.via == "primary":
        return f"would take {choice.key} itself ({choice.reason})"
    return f"would fall back to {choice.key} via {choice.via} ({choice.reason})"


def snapshot(inspector: Inspector) -> tuple[Status, list[LeaseInfo], list[TicketInfo], float]:
    """One read of everything the live view shows, with the time it was taken."""
    status = inspector.status()
    leases = inspector.leases()
    waiters = inspector.waiters()
    return status, leases, waiters, inspector.now()


def live_view(
    inspector: Inspector, *, header: RenderableType | None = None, footer: str = ""
) -> RenderableType:
    """Status, leases and the queue as one renderable; a database error becomes a line in it."""
    from collet_limiter import StorageError

    parts: list[RenderableType] = []
    if header is not None:
        parts.append(header)
    try:
        status, leases, waiters, now = snapshot(inspector)
    except StorageError as exc:
        parts.append(Text(f"cannot read {inspector.db}: {exc} (retrying)", style="bold red"))
    else:
        if not inspector.exists:
            parts.append(Text(missing_line(inspector.db), style="yellow"))
        parts += [status_table(status), leases_table(leases, now=now)]
        if waiters:
            parts.append(waiters_table(waiters, now=now))
    clock = datetime.now(tz=timezone.utc).strftime("%H:%M:%S UTC")
    # The database on a line of its own: a PostgreSQL URL is long, and the keys must stay readable.
    parts.append(Text(f"{inspector.db}\n{clock}{' · ' + footer if footer else ''}", style="dim"))
    return Group(*parts)


def plain_snapshot(inspector: Inspector) -> str:
    """One line for a log or a pipe: each model's use, the global cap and the queue."""
    from collet_limiter import StorageError

    stamp = datetime.now(tz=timezone.utc).strftime("%H:%M:%S")
    try:
        status = inspector.status()
    except StorageError as exc:
        return f"{stamp}  cannot read {inspector.db}: {exc}"
    # Before anything has run: the config's models, all free, and why there is nothing more.
    missing = "" if inspector.exists else "  (no database yet)"
    return f"{stamp}  {status_line(status)}{missing}"
