"""``collet-limiter metrics``: the state in the Prometheus text format, printed or served.

The command runs as a real process and its output is parsed with prometheus_client's own
parser; the state it must show is made by a real ``Limiter`` on the same database (leases, a
waiter, a reported 429 under adaptive limits). ``--serve`` is scraped over HTTP on loopback,
then stopped with a signal. On SQLite and PostgreSQL, but for the tests about files.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collet_limiter import (
    CostTier,
    Inspector,
    Limiter,
    ModelKey,
    ModelStatus,
    Status,
    load_config,
)
from collet_limiter._engine import resolve_target
from collet_limiter.cli._metrics import COOLDOWN_KINDS, Reading, families

from .cli_helpers import (
    CONFIG,
    TIMEOUT,
    cli_command,
    leave_a_dead_holder,
    query,
    run_cli,
    wait_until,
    waiter_count,
)
from .conftest import FakeClock
from .sql import SQLITE_ONLY, rows

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Every family the command prints, in its order (docs/cli.md lists them in the same order).
FAMILIES = [
    "collet_limiter_model_limit",
    "collet_limiter_model_effective_limit",
    "collet_limiter_model_in_use",
    "collet_limiter_model_waiting",
    "collet_limiter_model_cooling_down",
    "collet_limiter_model_cooldown_seconds_left",
    "collet_limiter_model_cooldown_kind",
    "collet_limiter_max_agents",
    "collet_limiter_in_use",
    "collet_limiter_waiting",
    "collet_limiter_database_exists",
    "collet_limiter_oldest_waiter_seconds",
    "collet_limiter_oldest_lease_seconds",
    "collet_limiter_expired_leases",
    # the counters (the parser names a family without its samples' _total)
    "collet_limiter_events",
    "collet_limiter_acquisitions",
    "collet_limiter_rate_limited",
]
COUNTERS = FAMILIES[-3:]
VIAS = ("primary", "chain", "capability", "cli", "queue")
PER_MODEL = (
    "model_limit",
    "model_effective_limit",
    "model_in_use",
    "model_waiting",
    "model_cooling_down",
)
MODELS = [("zai", "glm-5"), ("zai", "glm-4.7"), ("claude", "sonnet")]  # CONFIG's, in its order


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The CLI tests' config, with adaptive limits on."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + "\n[limiter]\nadaptive = true\n")
    return path


def parse(text: str) -> tuple[list[str], Samples]:
    """The family names in order, and every sample by (name, sorted labels)."""
    names: list[str] = []
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        assert family.type == ("counter" if family.name in COUNTERS else "gauge"), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, key
            samples[key] = sample.value
    return names, samples


def model(
    name: str, provider: str, model_name: str, **extra: str
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key of a per-model sample."""
    labels = {"provider": provider, "model": model_name, **extra}
    return (f"collet_limiter_{name}", tuple(sorted(labels.items())))


def total(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key of a global sample."""
    return (f"collet_limiter_{name}", ())


def counted(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of counter ``name`` (without _total), by the values of ``labels``."""
    return {
        tuple(dict(key)[label] for label in labels): value
        for (sample, key), value in samples.items()
        if sample == f"collet_limiter_{name}_total"
    }


def zeros(counts: dict[tuple[str, str, str], float] | None = None) -> dict[tuple[str, ...], float]:
    """``acquisitions`` by (provider, model, via): 0 for every model and via, but ``counts``."""
    found: dict[tuple[str, ...], float] = {
        (provider, name, via): 0.0 for provider, name in MODELS for via in VIAS
    }
    return found | dict(counts or {})


def metrics(database: Path | str, config: Path, *args: str) -> Samples:
    """Run ``collet-limiter metrics`` and parse what it printed (it must succeed silently)."""
    result = run_cli("--db", str(database), "--config", str(config), "metrics", *args)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    names, samples = parse(result.stdout)
    assert names == FAMILIES
    return samples


# --- printed once ---------------------------------------------------------------------------------


def test_metrics_show_leases_a_waiter_a_cooldown_and_an_adaptive_limit(
    database: Path | str, config: Path
) -> None:
    """Two leases on zai/glm-4.7 (limit 2), one of which reports a 429 (60 s): its limit in
    force drops to 1 and it cools down; local/solo is held, and a second acquire waits for it."""
    with Limiter(database, config=load_config(config)) as limiter:
        first = limiter.acquire("zai/glm-4.7", holder="first")
        second = limiter.acquire("zai/glm-4.7", holder="second")
        solo = limiter.acquire("local/solo", holder="solo")
        granted: list[object] = []
        waiter = threading.Thread(
            target=lambda: granted.append(
                limiter.acquire_wait("local/solo", timeout=TIMEOUT, holder="waiter")
            )
        )
        waiter.start()
        try:
            wait_until(lambda: waiter_count(database) == 1, what="the waiter to queue")
            second.report_rate_limited(60)
            started = time.time()
            samples = metrics(database, config)
            elapsed = time.time() - started
        finally:
            solo.release()  # the waiter is granted local/solo now
            waiter.join(TIMEOUT)
            for lease in (first, second, *granted):
                lease.release()  # type: ignore[attr-defined]
        assert not waiter.is_alive()

    expected = {
        # model: (limit, effective limit, in use, waiting, cooling down)
        ("zai", "glm-5"): (1, 1, 0, 0, 0),
        ("zai", "glm-4.7"): (2, 1, 2, 0, 1),
        ("claude", "sonnet"): (1, 1, 0, 0, 0),
        ("local", "solo"): (1, 1, 1, 1, 0),  # added on demand: after the config's models
    }
    for (provider, name), (limit, effective, in_use, waiting, cooling) in expected.items():
        got = tuple(samples[model(metric, provider, name)] for metric in PER_MODEL)
        assert got == (limit, effective, in_use, waiting, cooling), (provider, name)
        kinds = {
            kind: samples[model("model_cooldown_kind", provider, name, kind=kind)]
            for kind in COOLDOWN_KINDS
        }
        assert kinds == {kind: float(cooling and kind == "rate_limited") for kind in COOLDOWN_KINDS}
        if not cooling:
            assert samples[model("model_cooldown_seconds_left", provider, name)] == 0
    left = samples[model("model_cooldown_seconds_left", "zai", "glm-4.7")]
    assert 60 - elapsed - 1 < left <= 60  # a second of slack: the clocks of two processes
    per_model = [key for key in samples if key[0] == "collet_limiter_model_limit"]
    assert len(per_model) == 4

    assert samples[total("max_agents")] == 3
    assert samples[total("in_use")] == 3
    assert samples[total("waiting")] == 1
    assert samples[total("database_exists")] == 1
    assert samples[total("expired_leases")] == 0
    waited, held = samples[total("oldest_waiter_seconds")], samples[total("oldest_lease_seconds")]
    assert 0 < waited <= held < TIMEOUT  # the first lease was granted before the waiter queued


def schemas(database: str) -> set[str]:
    return {
        str(row[0]) for row in rows(database, "SELECT schema_name FROM information_schema.schemata")
    }


def test_metrics_before_anything_ran_show_the_configs_models_with_zeros_and_create_nothing(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    before = sorted(tmp_path.rglob("*"))
    samples = metrics(database, config)
    assert sorted(tmp_path.rglob("*")) == before  # no file, lock file or directory
    if isinstance(database, str):
        assert resolve_target(database).schema not in schemas(database)

    assert samples[total("database_exists")] == 0
    assert samples[total("max_agents")] == 3
    for name in ("in_use", "waiting", "oldest_waiter_seconds", "oldest_lease_seconds"):
        assert samples[total(name)] == 0, name
    assert samples[total("expired_leases")] == 0
    limits = {
        (dict(labels)["provider"], dict(labels)["model"]): value
        for (name, labels), value in samples.items()
        if name == "collet_limiter_model_limit"
    }
    assert limits == {("zai", "glm-5"): 1, ("zai", "glm-4.7"): 2, ("claude", "sonnet"): 1}
    for provider, name in MODELS:
        assert samples[model("model_effective_limit", provider, name)] == limits[provider, name]
        for metric in ("model_in_use", "model_waiting", "model_cooling_down"):
            assert samples[model(metric, provider, name)] == 0
        assert samples[model("model_cooldown_seconds_left", provider, name)] == 0
    # The counters: no event yet, and a 0 for every model (and via) that rate() can start from.
    assert counted(samples, "events", "kind", "provider", "model", "via") == {}
    assert counted(samples, "acquisitions", "provider", "model", "via") == zeros()
    assert counted(samples, "rate_limited", "provider", "model") == dict.fromkeys(MODELS, 0.0)

    # Once init has created it, the same but database_exists.
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    created = metrics(database, config)
    assert created.pop(total("database_exists")) == 1
    samples.pop(total("database_exists"))
    assert created == samples


# Events older than this are pruned by the counters test's reap; it sleeps twice as long first.
# Real time, because on PostgreSQL the events' times are the server's: a fake clock does not move
# them. Nothing but that reap prunes (a release prunes only at lease ids that are multiples of
# PRUNE_EVERY, which this test does not reach), so no length makes the test flaky.
HISTORY_SECS = 0.2


def test_counters_count_the_history_exactly_and_pruning_never_lowers_them(
    database: Path | str, tmp_path: Path
) -> None:
    """A process takes zai/glm-5 and dies; the first of three acquisitions reclaims its lease.
    A fourth, while zai/glm-5 is held, falls back to zai/glm-4.7 by the chain and reports a 429
    there. A reap then prunes all of it (the history keeps HISTORY_SECS); one more acquisition
    adds to the pruned count."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG + f"\n[limiter]\nhistory_days = {HISTORY_SECS / 86400!r}\n")
    leave_a_dead_holder(database, config, "zai/glm-5", holder="dies holding it")
    with Limiter(database, config=load_config(config)) as limiter:
        for _ in range(3):
            limiter.acquire("zai/glm-5", holder="one at a time").release()
        with (
            limiter.acquire("zai/glm-5", holder="holds it"),
            limiter.acquire("zai/glm-5", ["zai/glm-4.7"], holder="falls back") as moved,
        ):
            assert (str(moved.key), moved.via) == ("zai/glm-4.7", "chain")
            moved.report_rate_limited(60)
    events = {
        ("reclaimed", "zai", "glm-5", "primary"): 1.0,
        ("released", "zai", "glm-5", "primary"): 4.0,
        ("released", "zai", "glm-4.7", "chain"): 1.0,
        ("fell_back", "zai", "glm-4.7", "chain"): 1.0,
        ("rate_limited", "zai", "glm-4.7", ""): 1.0,
        ("cooldown_started", "zai", "glm-4.7", ""): 1.0,
    }
    acquisitions = zeros({("zai", "glm-5", "primary"): 5, ("zai", "glm-4.7", "chain"): 1})
    refusals = {**dict.fromkeys(MODELS, 0.0), ("zai", "glm-4.7"): 1.0}

    samples = metrics(database, config)
    assert counted(samples, "events", "kind", "provider", "model", "via") == events
    assert counted(samples, "acquisitions", "provider", "model", "via") == acquisitions
    assert counted(samples, "rate_limited", "provider", "model") == refusals

    time.sleep(2 * HISTORY_SECS)
    with Inspector(database, config=load_config(config)) as inspector:
        assert inspector.reap() == []  # nothing expired: only the prune
    assert query(database, "SELECT count(*) FROM events") == [(0,)]
    pruned = query(database, "SELECT kind, provider, model, via, count FROM event_counts")
    assert {tuple(row[:4]): row[4] for row in pruned} == events
    with Limiter(database, config=load_config(config)) as limiter:
        limiter.acquire("zai/glm-5", holder="after the prune").release()

    samples = metrics(database, config)
    events["released", "zai", "glm-5", "primary"] += 1  # 4 pruned, 1 kept
    assert counted(samples, "events", "kind", "provider", "model", "via") == events
    acquisitions["zai", "glm-5", "primary"] += 1
    assert counted(samples, "acquisitions", "provider", "model", "via") == acquisitions
    assert counted(samples, "rate_limited", "provider", "model") == refusals


@SQLITE_ONLY
def test_an_expired_lease_is_counted_and_the_oldest_lease_is_its_age(
    database: Path, config: Path
) -> None:
    """A lease granted an hour ago by a clock that stands still there was never renewed since."""
    clock = FakeClock(time.time() - 3600)
    with Limiter(database, config=load_config(config), clock=clock) as limiter:
        lease = limiter.acquire("zai/glm-5", holder="stuck")
        samples = metrics(database, config)
        lease.release()
    assert samples[total("expired_leases")] == 1
    assert 3600 <= samples[total("oldest_lease_seconds")] < 3600 + TIMEOUT
    assert samples[model("model_in_use", "zai", "glm-5")] == 1


def test_a_cooldown_of_a_kind_this_version_does_not_know_gets_its_own_series() -> None:
    """Families are built from the reading alone; a newer library's kind is not dropped."""
    now = time.time()
    until = datetime.fromtimestamp(now + 5, tz=timezone.utc)
    cooling = ModelStatus(
        key=ModelKey(provider="p", model="m"),
        limit=2,
        in_use=0,
        waiting=0,
        cost_tier=CostTier.CHEAP,
        supports_tool_use=True,
        is_cli=False,
        configured=True,
        effective_limit=2,
        cooldown_until=until,
        cooldown_kind="solar_flare",
        cooldown_reason="HTTP 599",
        cooldown_left=5.0,
    )
    status = Status(max_agents=1, in_use=0, waiting=0, models=(cooling,))
    reading = Reading(status=status, leases=[], waiters=[], now=now, exists=True)
    kinds = {
        sample.labels["kind"]: sample.value
        for family in families(reading)
        if family.name == "collet_limiter_model_cooldown_kind"
        for sample in family.samples
    }
    assert kinds == {**dict.fromkeys(COOLDOWN_KINDS, 0), "solar_flare": 1}


# --- served ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str = "/metrics") -> tuple[int, str]:
    """The status and body of a GET on loopback (an HTTP error status is returned, not raised)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def serving(
    database: Path | str, config: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``metrics --serve PORT`` as a real process, answering; stopped and reaped on the way out."""
    port = free_port()
    child = subprocess.Popen(
        cli_command(
            "--db", str(database), "--config", str(config), "metrics", "--serve", str(port), *args
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: answers(port) or child.poll() is not None, what="the server to answer")
        assert child.poll() is None, child.communicate()
        yield child, port
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=TIMEOUT)


def stop(child: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    child.send_signal(signum)
    out, err = child.communicate(timeout=TIMEOUT)
    return child.returncode, out, err


def test_serve_answers_scrapes_on_loopback_only_and_each_scrape_reads_afresh(
    database: Path | str, config: Path
) -> None:
    with serving(database, config) as (child, port):
        status, body = get(port)
        assert status == 200
        names, first = parse(body)
        assert names == FAMILIES
        assert (first[total("database_exists")], first[total("in_use")]) == (0, 0)

        listening = [
            conn.laddr
            for conn in psutil.Process(child.pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening == [("127.0.0.1", port)]

        with Limiter(database, config=load_config(config)) as limiter:
            lease = limiter.acquire("zai/glm-5", holder="between scrapes")
            status, body = get(port)
            lease.release()
        assert status == 200
        _, second = parse(body)
        assert second[total("database_exists")] == 1
        assert second[total("in_use")] == 1
        assert second[model("model_in_use", "zai", "glm-5")] == 1

        assert get(port, "/")[0] == 404
        code, out, err = stop(child, signal.SIGTERM)
    assert (code, out) == (0, "")
    assert err == (
        f"collet-limiter: serving metrics on http://127.0.0.1:{port}/metrics; Ctrl-C or SIGTERM "
        "stops\n"
    )


@SQLITE_ONLY
def test_serve_stops_on_sigint_with_status_0_and_q_says_nothing(
    database: Path, config: Path
) -> None:
    with serving(database, config, "-q") as (child, port):
        assert get(port)[0] == 200
        assert stop(child, signal.SIGINT) == (0, "", "")


@SQLITE_ONLY
def test_a_scrape_that_cannot_read_the_database_is_a_503_logged_once(
    database: Path, config: Path
) -> None:
    """Prometheus then marks the target down; serving goes on, and recovers by itself."""
    with serving(database, config) as (child, port):
        assert get(port)[0] == 200
        database.write_text("these are my notes, not a database\n" * 20)
        for _ in range(3):
            status, body = get(port)
            assert status == 503
            assert "is not a usable collet-limiter database" in body
        database.unlink()
        assert get(port)[0] == 200
        code, _, err = stop(child, signal.SIGTERM)
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert lines[1].startswith("collet-limiter: error: metrics: ")
    assert "is not a usable collet-limiter database" in lines[1]
    assert lines[2] == "collet-limiter: warning: metrics: reading the database works again"


# --- errors ---------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_port_in_use_is_a_usage_error(database: Path, config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--db", str(database), "--config", str(config), "metrics", "--serve", str(port)
        )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"collet-limiter: Invalid value for '--serve': cannot listen on 127.0.0.1:{port}: Address "
        "already in use; choose another port (see 'collet-limiter metrics --help')\n"
    )
    assert not database.exists()


def test_without_prometheus_client_it_says_how_to_install_it_and_exits_3(tmp_path: Path) -> None:
    """As with the extra not installed: the import of prometheus_client fails."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from collet_limiter.cli import main; main(['--db', sys.argv[1], 'metrics'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "l.db")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == (
        "collet-limiter: metrics needs prometheus-client, which is not installed: pip install "
        "'collet-limiter[metrics]'\n"
    )


def test_prometheus_client_is_loaded_by_the_metrics_command_only() -> None:
    code = (
        "import sys, collet_limiter, collet_limiter.cli._app; "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert (result.returncode, result.stdout) == (0, "False\n"), result.stderr
