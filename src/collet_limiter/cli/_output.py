"""What the commands print, without rich: the ``--json`` documents and plain-text formatting.

The JSON shapes are documented in docs/cli.md and are stable: fields may be added, never renamed
or removed. Times are UTC ISO 8601 with milliseconds and a ``Z``; durations are seconds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from collet_limiter import (
        Diagnosis,
        Explanation,
        LeaseInfo,
        ModelKey,
        ModelStatus,
        Reaped,
        Status,
        TicketInfo,
    )


def iso(moment: datetime) -> str:
    """``2026-11-27T23:07:55.123Z``, the form the database's ``*_at`` columns use."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def duration(seconds: float) -> str:
    """A short human duration: ``4.2s``, ``3m07s``, ``2h05m``."""
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, secs = divmod(int(seconds), 60)
        return f"{minutes}m{secs:02d}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def dumps(data: dict[str, Any]) -> str:
    """The JSON text of a document (indented: people read it too)."""
    return json.dumps(data, indent=2, sort_keys=False)


def model_data(model: ModelStatus) -> dict[str, Any]:
    """One model of ``status --json``."""
    until = model.cooldown_until
    return {
        "key": str(model.key),
        "provider": model.key.provider,
        "model": model.key.model,
        "limit": model.limit,
        "in_use": model.in_use,
        "waiting": model.waiting,
        "cost_tier": model.cost_tier.value,
        "supports_tool_use": model.supports_tool_use,
        "is_cli": model.is_cli,
        "configured": model.configured,
        "effective_limit": model.effective_limit,
        "cooldown_until": None if until is None else iso(until),
        "cooldown_kind": model.cooldown_kind,
        "cooldown_reason": model.cooldown_reason,
        "cooldown_left_secs": round(model.cooldown_left, 3),
    }


def limit_text(model: ModelStatus) -> str:
    """The limit in force, and the configured one when an adaptive limit is lower: ``2 (of 3)``."""
    if model.effective_limit < model.limit:
        return f"{model.effective_limit} (of {model.limit})"
    return str(model.limit)


def cooldown_why(model: ModelStatus) -> str:
    """Why a model cools down, as the library's verdicts say it: ``rate limited: HTTP 429``."""
    kind = (model.cooldown_kind or "rate_limited").replace("_", " ")
    return f"{kind}: {model.cooldown_reason}" if model.cooldown_reason else kind


def cooldown_text(model: ModelStatus) -> str:
    """``27.5s (exit code: command exited with 75)``; empty when the model is not cooling down."""
    if model.cooldown_until is None:
        return ""
    return f"{duration(model.cooldown_left)} ({cooldown_why(model)})"


def missing_line(db: str) -> str:
    """What the reading commands say before anything has created the database."""
    return (
        f"no database yet at {db}: nothing has run; the first acquire (or 'collet-limiter init') "
        "creates it"
    )


def status_data(status: Status, *, db: str, exists: bool = True) -> dict[str, Any]:
    """``status --json``; ``exists`` False: no database yet, the config's models shown."""
    return {
        "db": db,
        "exists": exists,
        "max_agents": status.max_agents,
        "in_use": status.in_use,
        "waiting": status.waiting,
        "models": [model_data(model) for model in status.models],
    }


def lease_data(lease: LeaseInfo, *, now: float) -> dict[str, Any]:
    """One lease of ``leases --json``."""
    return {
        "id": lease.id,
        "key": str(lease.key),
        "primary": str(lease.primary),
        "via": lease.via,
        "holder": lease.holder,
        "pid": lease.pid,
        "host": lease.host,
        "acquired_at": iso(lease.acquired_at),
        "expires_at": iso(lease.expires_at),
        "age_secs": round(now - lease.acquired_at.timestamp(), 3),
        "expires_in_secs": round(lease.expires_at.timestamp() - now, 3),
        "holder_alive": lease.holder_alive,
    }


def waiter_data(ticket: TicketInfo, *, now: float) -> dict[str, Any]:
    """One waiter of ``leases --json``."""
    return {
        "id": ticket.id,
        "key": str(ticket.key),
        "holder": ticket.holder,
        "pid": ticket.pid,
        "host": ticket.host,
        "enqueued_at": iso(ticket.enqueued_at),
        "waited_secs": round(now - ticket.enqueued_at.timestamp(), 3),
    }


def leases_data(
    leases: Sequence[LeaseInfo],
    waiters: Sequence[TicketInfo],
    *,
    db: str,
    now: float,
    exists: bool = True,
) -> dict[str, Any]:
    """``leases --json``: every lease, and the queue in the order it will be served."""
    return {
        "db": db,
        "exists": exists,
        "leases": [lease_data(lease, now=now) for lease in leases],
        "waiters": [waiter_data(ticket, now=now) for ticket in waiters],
    }


def explanation_data(
    explanation: Explanation, *, chain: Sequence[ModelKey], db: str, exists: bool = True
) -> dict[str, Any]:
    """``explain --json``."""
    choice = explanation.choice
    return {
        "db": db,
        "exists": exists,
        "primary": str(explanation.primary),
        "chain": [str(key) for key in chain],
        "global": explanation.global_reason,
        "choice": None if choice is None else {"key": str(choice.key), "via": choice.via},
        "candidates": [
            {
                "key": str(candidate.key),
                "via": candidate.via,
                "eligible": candidate.eligible,
                "has_room": candidate.has_room,
                "reason": candidate.reason,
            }
            for candidate in explanation.candidates
        ],
    }


def reaped_data(reaped: Sequence[Reaped], *, db: str) -> dict[str, Any]:
    """``reap --json``."""
    return {
        "db": db,
        "reaped": [
            {
                "kind": item.kind,
                "id": item.id,
                "key": str(item.key),
                "pid": item.pid,
                "host": item.host,
                "holder": item.holder,
                "reason": item.reason,
            }
            for item in reaped
        ],
    }


def reaped_lines(reaped: Sequence[Reaped]) -> list[str]:
    """``reap`` for people: one line per removed lease or ticket."""
    if not reaped:
        return ["nothing to reap: every lease and ticket is live"]
    lines = []
    for item in reaped:
        label = f", holder {item.holder!r}" if item.holder else ""
        lines.append(
            f"removed {item.kind} {item.id} on {item.key} (pid {item.pid} on {item.host}{label}): "
            f"{item.reason}"
        )
    return lines


def diagnosis_lines(diagnosis: Diagnosis, *, created: bool | None = None) -> list[str]:
    """``doctor`` and ``init`` for people: facts, then problems and notes."""
    d = diagnosis
    lines = [f"database       {d.db}"]
    if created is not None:
        lines.append(f"  created      {'yes, just now' if created else 'no, it existed'}")
    lines += _server_lines(d) if d.backend != "sqlite" else _file_lines(d)
    if d.models is not None:
        lines.append(
            f"  contents     {d.models} models, {d.leases} leases, {d.waiters} waiting, "
            f"global cap {d.max_agents}"
        )
    lines.append(f"config in use  {d.config_source} (fingerprint {d.config_fingerprint})")
    if d.stored_fingerprint is not None:
        same = "differs from the config in use" if d.config_differs else "same as the config in use"
        lines.append(
            f"  database's   {d.stored_config_source}, written {d.stored_config_written_at} "
            f"(fingerprint {d.stored_fingerprint}): {same}"
        )
    lines += [f"problem: {problem}" for problem in d.problems]
    lines += [f"note: {note}" for note in d.notes]
    count = len(d.problems)
    lines.append("ok: no problems found" if d.ok else f"{count} problem{'s' * (count != 1)} found")
    return lines


def _schema_state(d: Diagnosis) -> str:
    if d.schema_revision == d.expected_revision:
        return f"{d.schema_revision} (current)"
    return f"{d.schema_revision or 'none'} (expected {d.expected_revision})"


def _server_lines(d: Diagnosis) -> list[str]:
    """The PostgreSQL part of the report: server, group, clock, LISTEN."""
    if d.server_version is None:
        return [f"  server       {d.server}: not reachable"]
    lines = [
        f"  server       {d.server}, PostgreSQL {d.server_version}",
        f"  group        schema {d.schema}: "
        + (_schema_state(d) if d.exists else "does not exist yet"),
    ]
    if d.clock_offset_ms is not None:
        offset = d.clock_offset_ms
        side = "ahead of" if offset > 0 else "behind"
        said = f"{abs(offset):.0f} ms {side}" if abs(offset) >= 1 else "within 1 ms of"
        lines.append(f"  clock        the server's is {said} this host's")
    if d.listen_notify is not None:
        works = "works" if d.listen_notify else "does not work (waiters only poll)"
        lines.append(f"  LISTEN       {works}")
    return lines


def _file_lines(d: Diagnosis) -> list[str]:
    """The SQLite part of the report: the file, its schema, journal mode and filesystem."""
    lines = []
    if d.exists:
        lines.append(
            f"  file         {d.size} bytes, mode {d.file_mode}, owner {d.file_owner}; "
            f"directory mode {d.dir_mode}"
        )
    else:
        lines.append("  file         does not exist")
    if d.is_database:
        state = (
            "current"
            if d.schema_revision == d.expected_revision
            else f"expected {d.expected_revision}"
        )
        lines.append(f"  schema       {d.schema_revision or 'none'} ({state})")
        lines.append(f"  journal mode {d.journal_mode}")
    elif d.is_database is False:
        lines.append("  contents     not a usable SQLite database")
    kind = "network: WAL is unsafe" if d.network_filesystem else "local"
    lines.append(f"  filesystem   {d.filesystem or 'unknown'} ({kind})")
    return lines


def status_line(status: Status) -> str:
    """The whole status on one line, for logs and pipes: ``zai/glm-5 2/2 ... global 4/5``.

    A lowered adaptive limit reads ``zai/glm-5 1/2 (of 3)``, a cooldown
    ``zai/glm-5 0/1 (cooling down 27.5s, exit code: command exited with 75)``.
    """
    models = "  ".join(_model_words(m) for m in status.models)
    return f"{models}  global {status.in_use}/{status.max_agents}  waiting {status.waiting}"


def _model_words(model: ModelStatus) -> str:
    words = f"{model.key} {model.in_use}/{model.effective_limit}"
    if model.effective_limit < model.limit:
        words += f" (of {model.limit})"
    if model.waiting:
        words += f" ({model.waiting} waiting)"
    if model.cooldown_until is not None:
        words += f" (cooling down {duration(model.cooldown_left)}, {cooldown_why(model)})"
    return words
