"""The stored SQLite text of the hot path's statements (``_sqltext``): what the Core constructs
compile to, taken by a limiter's own dialect, so a new process compiles none of them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from collet_limiter import Limiter, _sqltext
from collet_limiter._engine import PREPARED, Prepared
from collet_limiter._lite import sqlalchemy_connection
from collet_limiter._sqlgen import generate

from .conftest import make_config


def _form(entry: object) -> tuple[object, ...]:
    """A compiled statement without its parameter getter (a function, compared by identity)."""
    return (entry.sql, entry.defaults, entry.names, entry.positional)  # type: ignore[attr-defined]


def test_the_stored_text_is_what_the_core_statements_compile_to_now() -> None:
    stored = Path(_sqltext.__file__).read_text(encoding="utf-8")
    assert generate() == stored, "out of date: run python -m collet_limiter._sqlgen"


def test_a_limiters_connections_take_the_stored_text_which_is_sqlalchemys_compilation(
    db: Path,
) -> None:
    with Limiter(db) as limiter:
        limiter.acquire("x/y").release()
        with limiter._runtime.connection() as conn:
            lite, real = conn.dialect, sqlalchemy_connection(conn).dialect
        assert len(PREPARED) >= 40
        for name, prepared in PREPARED.items():
            stored = prepared._generated(lite)
            assert stored is not None, name
            assert _form(stored) == _form(prepared.compiled_by(real)), name
            # SQLAlchemy's own connection on the file compiles as the generator did.
            assert prepared._generated(real) is not None, name


def test_a_dialect_that_compiles_otherwise_compiles_the_statements_itself() -> None:
    dialect = SQLiteDialect_pysqlite(paramstyle="named")  # text with :names, not ?
    prepared = PREPARED["store.release"]
    assert prepared._generated(dialect) is None
    assert ":lease_id" in prepared.compiled_by(dialect).sql
    # A statement of its own, even under a stored statement's name, is never looked up.
    own = Prepared(prepared.name, prepared.statement)
    assert own._generated(SQLiteDialect_pysqlite()) is None


# A new process opens two limiters on a file that exists; one acquires uncontended, releases,
# queues behind the other, is granted by its release, releases, then acquires, renews, reports a
# refusal and releases. It says which statements SQLAlchemy compiled (with "count", which
# imports SQLAlchemy's compiler to count), whether the Core constructs (``_statements``, the
# tables) were built at all, and which of SQLAlchemy and Alembic it imported.
_LIFE = textwrap.dedent(
    """
    import json, sys, threading
    from collet_limiter import Config, Limiter

    compiled = []
    if sys.argv[2] == "count":
        from sqlalchemy.sql import compiler

        original = compiler.Compiled.__init__

        def counting(self, dialect, statement, *args, **kwargs):
            compiled.append(type(statement).__name__)
            original(self, dialect, statement, *args, **kwargs)

        compiler.Compiled.__init__ = counting
    config = Config.model_validate(
        {"models": [{"name": "m", "concurrency_limit": 1}],
         "providers": [{"name": "p", "models": ["m"]}]}
    )
    first, second = Limiter(sys.argv[1], config=config), Limiter(sys.argv[1], config=config)
    first.acquire("p/m").release()
    held = second.acquire("p/m")
    queued = threading.Thread(target=lambda: first.acquire_wait("p/m").release())
    queued.start()
    while not first._runtime.waiters:  # registered: its ticket is in the queue
        queued.join(0.01)
    held.release()
    queued.join()
    lease = first.acquire("p/m")
    first._runtime.renew()
    lease.report_rate_limited(0.001, reason="a refusal")
    lease.release()
    first.close()
    second.close()
    import collet_limiter._schema as schema
    built = "collet_limiter._statements" in sys.modules or "leases" in vars(schema)
    imported = sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "alembic"})
    print(json.dumps({"compiled": compiled, "built": built, "imported": imported}))
    """
)


def _life_in_a_new_process(db: Path, mode: str) -> dict[str, object]:
    config = make_config(
        models=[{"name": "m", "concurrency_limit": 1}], providers=[{"name": "p", "models": ["m"]}]
    )
    with Limiter(db, config=config) as limiter:  # the file, its schema and the model's row
        limiter.acquire("p/m").release()
    done = subprocess.run(
        [sys.executable, "-c", _LIFE, str(db), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_a_new_process_builds_and_compiles_no_statement_to_acquire_queue_and_release(
    db: Path,
) -> None:
    found = _life_in_a_new_process(db, "count")
    assert (found["compiled"], found["built"]) == ([], False)


def test_a_new_process_on_a_current_database_imports_no_sqlalchemy(db: Path) -> None:
    found = _life_in_a_new_process(db, "plain")
    assert (found["imported"], found["built"]) == ([], False)
