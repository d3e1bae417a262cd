"""The SQLite text of every named ``Prepared`` statement (see ``_engine.Prepared``).

Written by ``python -m collet_limiter._sqlgen`` from the Core statements; do not edit.
"""

from __future__ import annotations

from typing import Any, Final

# ``_engine.dialect_fingerprint`` of the dialect that compiled the text below: a limiter whose
# dialect differs compiles the statements itself.
SQLITE_FINGERPRINT: Final = 'd2cddde710987355'

# name: (SQL, parameter names in the driver's order, values the statement binds itself)
SQLITE: Final[dict[str, tuple[str, tuple[str, ...], dict[str, Any]]]] = {
    'claim.delete_ticket': (
        'DELETE FROM waiters WHERE waiters.id = ?',
        ('ticket_id',),
        {},
    ),
    'claim.enqueue': (
        'INSERT INTO waiters (token, provider, model, holder, pid, pid_start, host_id, hostname, owner, enqueued_at, expires_at, enqueued_ts, expires_ts, wake_addr, lease_token, requested_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        ('token', 'provider', 'model', 'holder', 'pid', 'pid_start', 'host_id', 'hostname', 'owner', 'enqueued_at', 'expires_at', 'enqueued_ts', 'expires_ts', 'wake_addr', 'lease_token', 'requested_ts'),
        {},
    ),
    'claim.enqueue_returning': (
        'INSERT INTO waiters (token, provider, model, holder, pid, pid_start, host_id, hostname, owner, enqueued_at, expires_at, enqueued_ts, expires_ts, wake_addr, lease_token, requested_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id',
        ('token', 'provider', 'model', 'holder', 'pid', 'pid_start', 'host_id', 'hostname', 'owner', 'enqueued_at', 'expires_at', 'enqueued_ts', 'expires_ts', 'wake_addr', 'lease_token', 'requested_ts'),
        {},
    ),
    'claim.fast_returning.false': (
        'INSERT INTO leases (token, provider, model, primary_provider, primary_model, via, holder, pid, pid_start, host_id, hostname, owner, acquired_at, expires_at, acquired_ts, expires_ts, requested_ts) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, ? AS anon_4, ? AS anon_5, ? AS anon_6, ? AS anon_7, ? AS anon_8, ? AS anon_9, ? AS anon_10, ? AS anon_11, ? AS anon_12, ? AS anon_13, ? AS anon_14, ? AS anon_15, ? AS anon_16, ? AS anon_17 \nWHERE (SELECT count(*) AS count_1 \nFROM leases \nWHERE leases.provider = ? AND leases.model = ?) + (SELECT count(*) AS count_2 \nFROM waiters \nWHERE waiters.id < ? AND waiters.provider = ? AND waiters.model = ?) < (SELECT models.concurrency_limit \nFROM models \nWHERE models.provider = ? AND models.model = ? AND models.effective_limit IS NULL AND models.cooldown_until_ts IS NULL) AND (SELECT count(*) AS count_3 \nFROM leases) + (SELECT count(*) AS count_4 \nFROM waiters \nWHERE waiters.id < ?) < (SELECT CAST(meta.value AS INTEGER) AS value \nFROM meta \nWHERE meta."key" = ?) RETURNING id',
        ('v_token', 'v_provider', 'v_model', 'v_primary_provider', 'v_primary_model', 'v_via', 'v_holder', 'v_pid', 'v_pid_start', 'v_host_id', 'v_hostname', 'v_owner', 'v_acquired_at', 'v_expires_at', 'v_acquired_ts', 'v_expires_ts', 'v_requested_ts', 'v_provider', 'v_model', 'id_1', 'v_provider', 'v_model', 'v_provider', 'v_model', 'id_1', 'key_1'),
        {'id_1': 4611686018427387904, 'key_1': 'max_agents'},
    ),
    'claim.fast_returning.true': (
        'INSERT INTO leases (token, provider, model, primary_provider, primary_model, via, holder, pid, pid_start, host_id, hostname, owner, acquired_at, expires_at, acquired_ts, expires_ts, requested_ts) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, ? AS anon_4, ? AS anon_5, ? AS anon_6, ? AS anon_7, ? AS anon_8, ? AS anon_9, ? AS anon_10, ? AS anon_11, ? AS anon_12, ? AS anon_13, ? AS anon_14, ? AS anon_15, ? AS anon_16, ? AS anon_17 \nWHERE (SELECT count(*) AS count_1 \nFROM leases \nWHERE leases.provider = ? AND leases.model = ?) + (SELECT count(*) AS count_2 \nFROM waiters \nWHERE waiters.id < ? AND waiters.provider = ? AND waiters.model = ?) < (SELECT models.concurrency_limit \nFROM models \nWHERE models.provider = ? AND models.model = ? AND models.effective_limit IS NULL AND models.cooldown_until_ts IS NULL) AND (SELECT count(*) AS count_3 \nFROM leases) + (SELECT count(*) AS count_4 \nFROM waiters \nWHERE waiters.id < ?) < (SELECT CAST(meta.value AS INTEGER) AS value \nFROM meta \nWHERE meta."key" = ?) AND (EXISTS (SELECT * \nFROM waiters \nWHERE waiters.id = ? AND waiters.token = ?)) RETURNING id',
        ('v_token', 'v_provider', 'v_model', 'v_primary_provider', 'v_primary_model', 'v_via', 'v_holder', 'v_pid', 'v_pid_start', 'v_host_id', 'v_hostname', 'v_owner', 'v_acquired_at', 'v_expires_at', 'v_acquired_ts', 'v_expires_ts', 'v_requested_ts', 'v_provider', 'v_model', 'ticket_id', 'v_provider', 'v_model', 'v_provider', 'v_model', 'ticket_id', 'key_1', 'ticket_id', 'ticket_token'),
        {'key_1': 'max_agents'},
    ),
    'claim.insert_lease': (
        'INSERT INTO leases (token, provider, model, primary_provider, primary_model, via, holder, pid, pid_start, host_id, hostname, owner, acquired_at, expires_at, acquired_ts, expires_ts, requested_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        ('token', 'provider', 'model', 'primary_provider', 'primary_model', 'via', 'holder', 'pid', 'pid_start', 'host_id', 'hostname', 'owner', 'acquired_at', 'expires_at', 'acquired_ts', 'expires_ts', 'requested_ts'),
        {},
    ),
    'claim.insert_lease_returning': (
        'INSERT INTO leases (token, provider, model, primary_provider, primary_model, via, holder, pid, pid_start, host_id, hostname, owner, acquired_at, expires_at, acquired_ts, expires_ts, requested_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id',
        ('token', 'provider', 'model', 'primary_provider', 'primary_model', 'via', 'holder', 'pid', 'pid_start', 'host_id', 'hostname', 'owner', 'acquired_at', 'expires_at', 'acquired_ts', 'expires_ts', 'requested_ts'),
        {},
    ),
    'claim.model_queue': (
        'SELECT models.concurrency_limit, (SELECT count(*) AS count_1 \nFROM leases \nWHERE leases.provider = ? AND leases.model = ?) AS anon_1, (SELECT count(*) AS count_2 \nFROM waiters \nWHERE waiters.provider = ? AND waiters.model = ?) AS anon_2 \nFROM models \nWHERE models.provider = ? AND models.model = ? AND models.effective_limit IS NULL AND models.cooldown_until_ts IS NULL',
        ('provider', 'model', 'provider', 'model', 'provider', 'model'),
        {},
    ),
    'events.add_count': (
        'UPDATE event_counts SET count=(event_counts.count + ?) WHERE event_counts.kind = ? AND event_counts.provider = ? AND event_counts.model = ? AND event_counts.via = ?',
        ('k_count', 'k_kind', 'k_provider', 'k_model', 'k_via'),
        {},
    ),
    'events.aged': (
        "SELECT events.kind AS kind, coalesce(events.provider, '') AS provider, coalesce(events.model, '') AS model, coalesce(events.via, '') AS via, count(*) AS count_1 \nFROM events \nWHERE events.id < ? GROUP BY events.kind, coalesce(events.provider, ''), coalesce(events.model, ''), coalesce(events.via, '')",
        ('stop',),
        {},
    ),
    'events.all_counts': (
        "SELECT events.kind AS kind, coalesce(events.provider, '') AS provider, coalesce(events.model, '') AS model, coalesce(events.via, '') AS via, count(*) AS count_1 \nFROM events GROUP BY events.kind, coalesce(events.provider, ''), coalesce(events.model, ''), coalesce(events.via, '')",
        (),
        {},
    ),
    'events.batch_end': (
        'SELECT events.id \nFROM events ORDER BY events.id\n LIMIT ? OFFSET ?',
        ('param_1', 'skip'),
        {'param_1': 1},
    ),
    'events.closed_leases': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, leases.provider, leases.model, leases.primary_provider, leases.primary_model, leases.via, leases.id, NULL AS anon_4, leases.holder, leases.pid, leases.hostname, leases.acquired_ts, (leases.acquired_ts - coalesce(leases.requested_ts, leases.acquired_ts)) * ? AS anon_5, (? - leases.acquired_ts) * ? AS anon_6, ? AS anon_7, NULL AS anon__1, NULL AS anon__2, NULL AS anon__3, NULL AS anon__4 \nFROM leases \nWHERE leases.owner = ?',
        ('param_1', 'e_at', 'e_ts', 'param_2', 'e_ts', 'param_3', 'e_reason', 'row_owner'),
        {'param_1': 'released', 'param_2': 1000.0, 'param_3': 1000.0},
    ),
    'events.closed_tickets': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, waiters.provider, waiters.model, waiters.provider AS provider__1, waiters.model AS model__1, NULL AS anon_4, NULL AS anon__1, waiters.id, waiters.holder, waiters.pid, waiters.hostname, NULL AS anon__2, (? - coalesce(waiters.requested_ts, waiters.enqueued_ts)) * ? AS anon_5, NULL AS anon__3, ? AS anon_6, NULL AS anon__4, NULL AS anon__5, NULL AS anon__6, NULL AS anon__7 \nFROM waiters \nWHERE waiters.owner = ?',
        ('param_1', 'e_at', 'e_ts', 'e_ts', 'param_2', 'e_reason', 'row_owner'),
        {'param_1': 'cancelled', 'param_2': 1000.0},
    ),
    'events.delete_aged': (
        'DELETE FROM events WHERE events.id < ?',
        ('stop',),
        {},
    ),
    'events.discarded_lease': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, leases.provider, leases.model, leases.primary_provider, leases.primary_model, leases.via, leases.id, NULL AS anon_4, leases.holder, leases.pid, leases.hostname, leases.acquired_ts, (leases.acquired_ts - coalesce(leases.requested_ts, leases.acquired_ts)) * ? AS anon_5, (? - leases.acquired_ts) * ? AS anon_6, ? AS anon_7, NULL AS anon__1, NULL AS anon__2, NULL AS anon__3, NULL AS anon__4 \nFROM leases \nWHERE leases.token = ?',
        ('param_1', 'e_at', 'e_ts', 'param_2', 'e_ts', 'param_3', 'e_reason', 'row_token'),
        {'param_1': 'discarded', 'param_2': 1000.0, 'param_3': 1000.0},
    ),
    'events.first_kept': (
        'SELECT min(events.id) AS min_1 \nFROM events \nWHERE events.id < ? AND events.ts >= ?',
        ('bound', 'cutoff'),
        {},
    ),
    'events.gave_up.leases': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, leases.provider, leases.model, leases.primary_provider, leases.primary_model, leases.via, leases.id, NULL AS anon_4, leases.holder, leases.pid, leases.hostname, leases.acquired_ts, (? - coalesce(leases.requested_ts, leases.acquired_ts)) * ? AS anon_5, NULL AS anon__1, ? AS anon_6, NULL AS anon__2, NULL AS anon__3, NULL AS anon__4, NULL AS anon__5 \nFROM leases \nWHERE leases.token = ?',
        ('e_kind', 'e_at', 'e_ts', 'e_ts', 'param_1', 'e_reason', 'row_token'),
        {'param_1': 1000.0},
    ),
    'events.gave_up.waiters': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, waiters.provider, waiters.model, waiters.provider AS provider__1, waiters.model AS model__1, NULL AS anon_4, NULL AS anon__1, waiters.id, waiters.holder, waiters.pid, waiters.hostname, NULL AS anon__2, (? - coalesce(waiters.requested_ts, waiters.enqueued_ts)) * ? AS anon_5, NULL AS anon__3, ? AS anon_6, NULL AS anon__4, NULL AS anon__5, NULL AS anon__6, NULL AS anon__7 \nFROM waiters \nWHERE waiters.token = ?',
        ('e_kind', 'e_at', 'e_ts', 'e_ts', 'param_1', 'e_reason', 'row_token'),
        {'param_1': 1000.0},
    ),
    'events.insert': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        ('kind', 'at', 'ts', 'provider', 'model', 'primary_provider', 'primary_model', 'via', 'lease_id', 'ticket_id', 'holder', 'pid', 'hostname', 'acquired_ts', 'waited_ms', 'held_ms', 'reason', 'cooldown_kind', 'until_ts', 'limit_before', 'limit_after'),
        {},
    ),
    'events.lease_by_id': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, leases.provider, leases.model, leases.primary_provider, leases.primary_model, leases.via, leases.id, NULL AS anon_4, leases.holder, leases.pid, leases.hostname, leases.acquired_ts, (leases.acquired_ts - coalesce(leases.requested_ts, leases.acquired_ts)) * ? AS anon_5, (? - leases.acquired_ts) * ? AS anon_6, ? AS anon_7, NULL AS anon__1, NULL AS anon__2, NULL AS anon__3, NULL AS anon__4 \nFROM leases \nWHERE leases.id = ? AND leases.token = ?',
        ('e_kind', 'e_at', 'e_ts', 'param_1', 'e_ts', 'param_2', 'e_reason', 'row_id', 'row_token'),
        {'param_1': 1000.0, 'param_2': 1000.0},
    ),
    'events.new_count': (
        'INSERT INTO event_counts (kind, provider, model, via, count) VALUES (?, ?, ?, ?, ?)',
        ('k_kind', 'k_provider', 'k_model', 'k_via', 'k_count'),
        {},
    ),
    'events.ticket_by_id': (
        'INSERT INTO events (kind, at, ts, provider, model, primary_provider, primary_model, via, lease_id, ticket_id, holder, pid, hostname, acquired_ts, waited_ms, held_ms, reason, cooldown_kind, until_ts, limit_before, limit_after) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, waiters.provider, waiters.model, waiters.provider AS provider__1, waiters.model AS model__1, NULL AS anon_4, NULL AS anon__1, waiters.id, waiters.holder, waiters.pid, waiters.hostname, NULL AS anon__2, (? - coalesce(waiters.requested_ts, waiters.enqueued_ts)) * ? AS anon_5, NULL AS anon__3, ? AS anon_6, NULL AS anon__4, NULL AS anon__5, NULL AS anon__6, NULL AS anon__7 \nFROM waiters \nWHERE waiters.id = ? AND waiters.token = ?',
        ('e_kind', 'e_at', 'e_ts', 'e_ts', 'param_1', 'e_reason', 'row_id', 'row_token'),
        {'param_1': 1000.0},
    ),
    'store.ahead': (
        'SELECT waiters.provider, waiters.model, count(*) AS count_1 \nFROM waiters \nWHERE waiters.id < ? GROUP BY waiters.provider, waiters.model',
        ('ticket_id',),
        {},
    ),
    'store.any_waiter': (
        'SELECT waiters.id \nFROM waiters\n LIMIT ? OFFSET ?',
        ('param_1', 'param_2'),
        {'param_1': 1, 'param_2': 0},
    ),
    'store.delete_granted': (
        'DELETE FROM waiters WHERE waiters.id = ?',
        ('granted_id',),
        {},
    ),
    'store.delete_id.lease': (
        'DELETE FROM leases WHERE leases.id = ?',
        ('row_id',),
        {},
    ),
    'store.delete_id.ticket': (
        'DELETE FROM waiters WHERE waiters.id = ?',
        ('row_id',),
        {},
    ),
    'store.delete_owned.leases': (
        'DELETE FROM leases WHERE leases.owner = ?',
        ('owner',),
        {},
    ),
    'store.delete_owned.tickets': (
        'DELETE FROM waiters WHERE waiters.owner = ?',
        ('owner',),
        {},
    ),
    'store.discard_lease': (
        'DELETE FROM leases WHERE leases.token = ?',
        ('lease_token',),
        {},
    ),
    'store.discard_ticket': (
        'DELETE FROM waiters WHERE waiters.token = ?',
        ('ticket_token',),
        {},
    ),
    'store.grant_lease': (
        'INSERT INTO leases (token, provider, model, primary_provider, primary_model, via, holder, pid, pid_start, host_id, hostname, owner, acquired_at, expires_at, acquired_ts, expires_ts, requested_ts) SELECT waiters.lease_token, waiters.provider, waiters.model, waiters.provider AS provider__1, waiters.model AS model__1, ? AS anon_1, waiters.holder, waiters.pid, waiters.pid_start, waiters.host_id, waiters.hostname, waiters.owner, ? AS anon_2, waiters.expires_at, ? AS anon_3, waiters.expires_ts, coalesce(waiters.requested_ts, waiters.enqueued_ts) AS coalesce_1 \nFROM waiters \nWHERE waiters.id = ?',
        ('param_1', 'granted_at', 'granted_ts', 'granted_id'),
        {'param_1': 'queue'},
    ),
    'store.grant_queue': (
        'SELECT waiters.id, waiters.provider, waiters.model, waiters.wake_addr, waiters.lease_token, models.concurrency_limit, models.cost_tier, models.supports_tool_use, models.is_cli, models.position, models.effective_limit, models.limited_at, models.limited_ts, models.recover_secs, models.cooldown_until_at, models.cooldown_until_ts, models.cooldown_kind, models.cooldown_reason, (SELECT count(*) AS count_1 \nFROM leases \nWHERE leases.provider = waiters.provider AND leases.model = waiters.model) AS held_here, (SELECT count(*) AS count_2 \nFROM leases) AS held_all, (SELECT meta.value \nFROM meta \nWHERE meta."key" = ?) AS cap \nFROM waiters LEFT OUTER JOIN models ON models.provider = waiters.provider AND models.model = waiters.model ORDER BY waiters.id',
        ('key_1',),
        {'key_1': 'max_agents'},
    ),
    'store.held': (
        'SELECT leases.provider, leases.model, count(*) AS count_1 \nFROM leases GROUP BY leases.provider, leases.model',
        (),
        {},
    ),
    'store.holders': (
        'SELECT leases.pid, leases.pid_start, leases.host_id, leases.expires_ts \nFROM leases',
        (),
        {},
    ),
    'store.holders_of': (
        'SELECT count(*) AS count_1 \nFROM leases \nWHERE leases.provider = ? AND leases.model = ?',
        ('provider', 'model'),
        {},
    ),
    'store.insert_model': (
        'INSERT INTO models (provider, model, concurrency_limit, cost_tier, supports_tool_use, is_cli, position, effective_limit, limited_at, limited_ts, recover_secs, cooldown_until_at, cooldown_until_ts, cooldown_kind, cooldown_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        ('provider', 'model', 'concurrency_limit', 'cost_tier', 'supports_tool_use', 'is_cli', 'position', 'effective_limit', 'limited_at', 'limited_ts', 'recover_secs', 'cooldown_until_at', 'cooldown_until_ts', 'cooldown_kind', 'cooldown_reason'),
        {},
    ),
    'store.lease_by_token': (
        'SELECT leases.id, leases.token, leases.provider, leases.model, leases.primary_provider, leases.primary_model, leases.via, leases.holder, leases.pid, leases.pid_start, leases.host_id, leases.hostname, leases.owner, leases.acquired_at, leases.expires_at, leases.acquired_ts, leases.expires_ts, leases.requested_ts \nFROM leases \nWHERE leases.token = ?',
        ('token',),
        {},
    ),
    'store.model_of': (
        'SELECT models.provider, models.model, models.concurrency_limit, models.cost_tier, models.supports_tool_use, models.is_cli, models.position, models.effective_limit, models.limited_at, models.limited_ts, models.recover_secs, models.cooldown_until_at, models.cooldown_until_ts, models.cooldown_kind, models.cooldown_reason \nFROM models \nWHERE models.provider = ? AND models.model = ?',
        ('provider', 'model'),
        {},
    ),
    'store.notify': (
        'SELECT pg_notify(?, ?) AS pg_notify_1',
        ('channel', 'payload'),
        {},
    ),
    'store.owned_lease_tokens': (
        'SELECT leases.token \nFROM leases \nWHERE leases.owner = ?',
        ('renew_owner',),
        {},
    ),
    'store.reapable.lease': (
        'SELECT leases.id, leases.token, leases.provider, leases.model, leases.pid, leases.pid_start, leases.hostname, leases.holder, leases.expires_ts \nFROM leases \nWHERE leases.expires_ts < ? OR leases.host_id = ?',
        ('now', 'my_host'),
        {},
    ),
    'store.reapable.ticket': (
        'SELECT waiters.id, waiters.token, waiters.provider, waiters.model, waiters.pid, waiters.pid_start, waiters.hostname, waiters.holder, waiters.expires_ts \nFROM waiters \nWHERE waiters.expires_ts < ? OR waiters.host_id = ?',
        ('now', 'my_host'),
        {},
    ),
    'store.release': (
        'DELETE FROM leases WHERE leases.id = ? AND leases.token = ?',
        ('lease_id', 'lease_token'),
        {},
    ),
    'store.release_returning': (
        'DELETE FROM leases WHERE leases.id = ? AND leases.token = ? RETURNING EXISTS (SELECT waiters.id \nFROM waiters) AS anon_1',
        ('lease_id', 'lease_token'),
        {},
    ),
    'store.renew.leases': (
        'UPDATE leases SET expires_at=?, expires_ts=? WHERE leases.owner = ?',
        ('new_expires_at', 'new_expires_ts', 'renew_owner'),
        {},
    ),
    'store.renew.tickets': (
        'UPDATE waiters SET expires_at=?, expires_ts=? WHERE waiters.owner = ?',
        ('new_expires_at', 'new_expires_ts', 'renew_owner'),
        {},
    ),
    'store.select_meta': (
        'SELECT meta.value \nFROM meta \nWHERE meta."key" = ?',
        ('meta_key',),
        {},
    ),
    'store.select_models': (
        'SELECT models.provider, models.model, models.concurrency_limit, models.cost_tier, models.supports_tool_use, models.is_cli, models.position, models.effective_limit, models.limited_at, models.limited_ts, models.recover_secs, models.cooldown_until_at, models.cooldown_until_ts, models.cooldown_kind, models.cooldown_reason \nFROM models',
        (),
        {},
    ),
    'store.store_health': (
        'UPDATE models SET effective_limit=?, limited_at=?, limited_ts=?, recover_secs=?, cooldown_until_at=?, cooldown_until_ts=?, cooldown_kind=?, cooldown_reason=? WHERE models.provider = ? AND models.model = ?',
        ('h_effective_limit', 'h_limited_at', 'h_limited_ts', 'h_recover_secs', 'h_cooldown_until_at', 'h_cooldown_until_ts', 'h_cooldown_kind', 'h_cooldown_reason', 'provider', 'model'),
        {},
    ),
    'store.ticket_by_token': (
        'SELECT waiters.id \nFROM waiters \nWHERE waiters.token = ?',
        ('ticket_token',),
        {},
    ),
    'store.ticket_exists': (
        'SELECT count(*) AS count_1 \nFROM waiters \nWHERE waiters.id = ? AND waiters.token = ?',
        ('ticket_id', 'ticket_token'),
        {},
    ),
    'store.waiters': (
        'SELECT waiters.id, waiters.provider, waiters.model, waiters.wake_addr, waiters.lease_token, waiters.pid, waiters.pid_start, waiters.host_id, waiters.expires_ts \nFROM waiters ORDER BY waiters.id',
        (),
        {},
    ),
    'store.waiting': (
        'SELECT waiters.provider, waiters.model, count(*) AS count_1 \nFROM waiters GROUP BY waiters.provider, waiters.model',
        (),
        {},
    ),
}
