"""The bad-input catalogue: every bad input, the exact message it produces, its CLI exit status.

Each case builds the bad input on ``tmp_path``, calls the library as a user would, and compares
the ``LimiterError`` subclass and its whole message with the catalogue; docs/reliability.md
lists the same messages (a test checks it does, with the paths written ``<config>``, ``<db>``
and so on). Every case also runs through the command line once, in one child process, for its
documented exit status (2 usage, 3 config, 4 database) and its one-line error. Database files
that a case refuses are left byte for byte as they were.

Also here: the check that no SQL in ``src/`` is built by string formatting, and the network
filesystem warning.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import (
    Config,
    ConfigError,
    DatabaseCorruptError,
    DatabaseUnavailableError,
    InvalidKeyError,
    Limiter,
    LimiterError,
    SchemaVersionError,
    load_agent_chain,
    load_config,
)
from collet_limiter._schema import SCHEMA_REVISION

from .namespaces import run_with_mount_table

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Case:
    """One bad input: how to make it, what the library raises, what the CLI exits with."""

    name: str
    error: type[LimiterError]
    message: str  # with <config>, <agent>, <db>, <dir> for the paths
    call: Callable[[dict[str, Path]], object]
    cli: list[str] | None  # the command line that meets the same input (None: library only)
    status: int = 0
    files: dict[str, str | bytes] = field(default_factory=dict)  # <config>'s or <agent>'s text
    env: dict[str, str] = field(default_factory=dict)
    database: Callable[[Path], None] | None = None  # makes <db> before the call
    cleanup: Callable[[Path], None] | None = None  # undoes what ``database`` did to <db>


def _config(paths: dict[str, Path]) -> object:
    return load_config(paths["config"], env={})


def _limiter(paths: dict[str, Path], **kwargs: Any) -> object:
    Limiter(paths["db"], config=Config(), **kwargs).close()
    return None


def _acquire(*args: Any, **kwargs: Any) -> Callable[[dict[str, Path]], object]:
    def call(paths: dict[str, Path]) -> object:
        with Limiter(paths["db"], config=MANY) as limiter:
            return limiter.acquire(*args, **kwargs)

    return call


def not_a_database(db: Path) -> None:
    db.write_text("these are my notes, not a database\n" * 100)


def newer_schema(db: Path) -> None:
    Limiter(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")


MANY_DATA: dict[str, Any] = {
    "collaboration": {"max_agents": 100},
    "models": [{"name": "m", "concurrency_limit": 50}],
}
MANY = Config.model_validate(MANY_DATA)


def corrupted(db: Path) -> None:
    """A real limiter database with 30 leases whose ``leases`` table page is overwritten."""
    # A process that takes 30 leases and dies without closing (a crash): its rows stay.
    crash = textwrap.dedent(f"""
        import os
        from collet_limiter import Config, Limiter
        limiter = Limiter({str(db)!r}, config=Config.model_validate({MANY_DATA!r}))
        held = [limiter.acquire("p/m", holder="h" * 200) for _ in range(30)]
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=120)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'leases'"
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(db.read_bytes())
    data[(root - 1) * size : root * size] = bytes((i * 37 + 11) % 256 for i in range(size))
    db.write_bytes(bytes(data))


def another_programs_database(db: Path) -> None:
    """``--db ~/notes.sqlite`` by mistake: it must be refused and left as it was."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")


def unwritable_directory(db: Path) -> None:
    """The database's directory cannot be written: immutable for root (root ignores modes)."""
    db.parent.mkdir()
    if os.geteuid() != 0:
        db.parent.chmod(0o500)
    elif subprocess.run(
        ["chattr", "+i", str(db.parent)], capture_output=True, check=False
    ).returncode:
        pytest.skip("chattr +i is not supported here")


def writable_again(db: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(db.parent)], check=True)
    db.parent.chmod(0o700)


def a_directory(db: Path) -> None:
    db.mkdir()


def world_writable_directory(db: Path) -> None:
    db.parent.mkdir()
    db.parent.chmod(0o777)


CORRUPT = "is not a usable collet-limiter database"
POINT_ELSEWHERE = "point --db or COLLET_LIMITER_DB at another file, or move this one away"

CASES = [
    Case("malformed TOML", ConfigError,
         "<config>: invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 15)",
         _config, ["init"], 3, files={"config": "[collaboration\nmax_agents = 3\n"}),
    Case("not UTF-8", ConfigError, "<config>: not UTF-8 text (invalid continuation byte)",
         _config, ["init"], 3, files={"config": b'name = "caf\xe9"\n'}),
    Case("wrong type", ConfigError,
         "<config>: collaboration.max_agents: Input should be a valid integer (got '3')",
         _config, ["init"], 3, files={"config": '[collaboration]\nmax_agents = "3"\n'}),
    Case("zero limit", ConfigError,
         "<config>: models[0].concurrency_limit: Input should be greater than or equal to 1 (got 0)",
         _config, ["init"], 3, files={"config": '[[models]]\nname = "glm-5"\nconcurrency_limit = 0\n'}),
    Case("negative limit", ConfigError,
         "<config>: models[0].concurrency_limit: Input should be greater than or equal to 1 (got -2)",
         _config, ["init"], 3, files={"config": '[[models]]\nname = "glm-5"\nconcurrency_limit = -2\n'}),
    Case("max_agents 0", ConfigError,
         "<config>: collaboration.max_agents: Input should be greater than or equal to 1 (got 0)",
         _config, ["init"], 3, files={"config": "[collaboration]\nmax_agents = 0\n"}),
    Case("unknown key in [limiter]", ConfigError,
         "<config>: limiter.leese_ttl_secs: unknown key (check the spelling; [limiter] accepts only documented keys) (got 5)",
         _config, ["init"], 3, files={"config": "[limiter]\nleese_ttl_secs = 5\n"}),
    Case("zero lease TTL", ConfigError,
         "<config>: limiter.lease_ttl_secs: Input should be greater than 0 (got 0)",
         _config, ["init"], 3, files={"config": "[limiter]\nlease_ttl_secs = 0\n"}),
    Case("unknown cost tier", ConfigError,
         "<config>: models[0].cost_tier: Input should be 'premium', 'standard' or 'cheap' (got 'luxury')",
         _config, ["init"], 3, files={"config": '[[models]]\nname = "glm-5"\ncost_tier = "luxury"\n'}),
    Case("provider name with a slash", ConfigError,
         "<config>: providers[0].name: 'zai/coding' is not a provider name: it must be non-empty and contain no '/' (got 'zai/coding')",
         _config, ["init"], 3, files={"config": '[[providers]]\nname = "zai/coding"\n'}),
    Case("model entry that is not a model", ConfigError,
         "<config>: models[0].name: '/glm-5' is neither a model name nor 'provider/model' (got '/glm-5')",
         _config, ["init"], 3, files={"config": '[[models]]\nname = "/glm-5"\n'}),
    Case("empty model in a provider", ConfigError,
         "<config>: providers[0].models: model names must not be empty (got ['glm-5', ' '])",
         _config, ["init"], 3, files={"config": '[[providers]]\nname = "zai"\nmodels = ["glm-5", " "]\n'}),
    Case("provider defined twice", ConfigError,
         "<config>: providers: provider 'zai' is defined twice (got [{'name': 'zai'}, {'name': 'zai'}])",
         _config, ["init"], 3, files={"config": '[[providers]]\nname = "zai"\n[[providers]]\nname = "zai"\n'}),
    Case("an unknown group in [limiter]", ConfigError,
         "[limiter] group = 'no-such-group-xyz': no such group on this host; create it "
         "(groupadd) and add the users who share the database, or remove the setting",
         lambda p: Limiter(p["db"], config=load_config(p["config"], env={})), ["init"], 3,
         files={"config": '[limiter]\ngroup = "no-such-group-xyz"\n'}),
    Case("config file missing", ConfigError, "<config>: config file not found",
         _config, ["init"], 3),
    Case("bad COLLET_COLLAB_MAX_AGENTS", ConfigError,
         "COLLET_COLLAB_MAX_AGENTS='lots': must be a whole number >= 1",
         lambda p: load_config(env={"COLLET_COLLAB_MAX_AGENTS": "lots"}), ["init"], 3,
         env={"COLLET_COLLAB_MAX_AGENTS": "lots"}),
    Case("agent file entry that is not a key", InvalidKeyError,
         "<agent>: providers: 'not-a-key' is not 'provider/model'",
         lambda p: load_agent_chain(p["agent"]), ["run", "-m", "a/b", "--agent", "<agent>", "--", "true"], 3,
         files={"agent": "---\nproviders: zai/glm-5, not-a-key\n---\n"}),
    Case("agent file missing", ConfigError, "<agent>: agent file not found",
         lambda p: load_agent_chain(p["agent"]), ["run", "-m", "a/b", "--agent", "<agent>", "--", "true"], 3),
    Case("primary that is not provider/model", InvalidKeyError,
         "invalid primary model 'glm-5': expected 'provider/model', e.g. 'zai-coding/glm-5'",
         _acquire("glm-5"), ["explain", "glm-5"], 2),
    Case("chain list entry that is not provider/model", InvalidKeyError,
         "invalid fallback chain entry 'junk': expected 'provider/model', e.g. 'zai-coding/glm-5'",
         _acquire("a/b", ["c/d", "junk"]), ["explain", "a/b", "--fallback", "c/d,junk"], 2),
    Case("negative timeout", ConfigError, "timeout must be >= 0 or None (got -1)",
         _acquire("a/b", timeout=-1), ["run", "-m", "a/b", "--timeout", "-1", "--", "true"], 2),
    Case("zero lease_ttl argument", ConfigError, "lease_ttl must be > 0 (got 0)",
         lambda p: _limiter(p, lease_ttl=0), None),
    Case("in-memory database", ConfigError,
         "sqlite:///:memory:: an in-memory SQLite database cannot be shared between processes; give a file path",
         lambda p: Limiter("sqlite:///:memory:"), None),
    Case("database in a missing directory", DatabaseUnavailableError,
         "cannot create database <dir>/missing/limiter.db: directory <dir>/missing does not exist; create it or choose another --db path",
         lambda p: Limiter(p["dir"] / "missing" / "limiter.db"), ["--db", "<dir>/missing/limiter.db", "init"], 4),
    Case("database in a directory that cannot be written", DatabaseUnavailableError,
         "cannot create database <db>: directory <dir>/locked is not writable",
         _limiter, ["init"], 4, database=unwritable_directory, cleanup=writable_again),
    Case("database path that is a directory", DatabaseUnavailableError,
         "cannot use database <db>: it is a directory",
         _limiter, ["init"], 4, database=a_directory),
    Case("database in a world-writable directory", DatabaseUnavailableError,
         "refusing database <db>: its directory <dir>/open is writable by every user (and not sticky), so anyone could replace the database; use a private directory",
         _limiter, ["init"], 4, database=world_writable_directory),
    Case("a file that is not a SQLite database", DatabaseCorruptError,
         f"<db> {CORRUPT} (file is not a database); {POINT_ELSEWHERE}",
         _limiter, ["init"], 4, database=not_a_database),
    Case("a SQLite database of another program", DatabaseCorruptError,
         "<db> is not a usable collet-limiter database: it holds another program's tables (notes); choose another --db path (it was left as it was)",
         _limiter, ["init"], 4, database=another_programs_database),
    Case("a database from a newer schema", SchemaVersionError,
         "database <db> has schema revision '0099_future', written by a newer collet-limiter "
         f"(this one knows up to '{SCHEMA_REVISION}'); upgrade collet-limiter or use another database",
         _limiter, ["init"], 4, database=newer_schema),
    Case("a corrupted database", DatabaseCorruptError,
         f"<db> {CORRUPT} (database disk image is malformed); {POINT_ELSEWHERE}",
         _acquire("p/m", timeout=0), ["leases"], 4, database=corrupted),
]  # fmt: skip


def materialise(case: Case, tmp: Path) -> dict[str, Path]:
    paths = {"dir": tmp, "config": tmp / "config.toml", "agent": tmp / "agent.md"}
    paths["db"] = tmp / "limiter.db"
    if "world" in case.name:
        paths["db"] = tmp / "open" / "limiter.db"
    elif "cannot be written" in case.name:
        paths["db"] = tmp / "locked" / "limiter.db"
    for name, text in case.files.items():
        target = paths[name]
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
    if case.database is not None:
        case.database(paths["db"])
    return paths


def render(text: str, paths: dict[str, Path]) -> str:
    for name in ("config", "agent", "db", "dir"):
        text = text.replace(f"<{name}>", str(paths[name]))
    return text


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_input_raises_its_error_with_its_exact_message(case: Case, tmp_path: Path) -> None:
    paths = materialise(case, tmp_path)
    before = digest(paths["db"])
    try:
        with pytest.raises(case.error) as caught:
            case.call(paths)
    finally:
        if case.cleanup is not None:
            case.cleanup(paths["db"])
    assert str(caught.value) == render(case.message, paths)
    assert type(caught.value) is case.error
    if before is not None:
        assert digest(paths["db"]) == before, "a refused database file was changed"


def test_the_command_line_meets_each_bad_input_with_one_line_and_its_status(
    tmp_path: Path,
) -> None:
    """All cases in one child process (each through ``collet_limiter.cli.main``), for speed."""
    runs = []
    cleanups = []
    for index, case in enumerate(case for case in CASES if case.cli is not None):
        tmp = tmp_path / str(index)
        tmp.mkdir()
        paths = materialise(case, tmp)
        argv = [render(arg, paths) for arg in case.cli or []]
        if "--db" not in argv:
            argv = ["--db", str(paths["db"]), *argv]
        if case.files.get("config") is not None or case.name == "config file missing":
            argv = ["--config", str(paths["config"]), *argv]
        runs.append({"name": case.name, "argv": argv, "env": case.env, "status": case.status})
        if case.cleanup is not None:
            cleanups.append((case.cleanup, paths["db"]))
    code = textwrap.dedent(
        """
        import contextlib, io, json, os, sys
        from collet_limiter.cli import main
        results = []
        for run in json.loads(sys.stdin.read()):
            os.environ.update(run["env"])
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(run["argv"])
                except SystemExit as exc:
                    status = exc.code
            for name in run["env"]:
                del os.environ[name]
            results.append({"name": run["name"], "status": status, "stderr": err.getvalue()})
        print(json.dumps(results))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLET_")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(runs),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    finally:
        for cleanup, db in cleanups:
            cleanup(db)
    assert result.returncode == 0, result.stderr
    for run, outcome in zip(runs, json.loads(result.stdout), strict=True):
        lines = outcome["stderr"].splitlines()
        assert outcome["status"] == run["status"], (run, outcome)
        assert len(lines) == 1 and lines[0].startswith("collet-limiter: "), (run, outcome)
        assert "Traceback" not in outcome["stderr"]


def test_the_documentation_lists_every_message_of_the_catalogue() -> None:
    doc = DOC.read_text()
    for case in CASES:
        shown = case.message.replace(f"'{SCHEMA_REVISION}'", "'<revision>'")
        assert shown in doc, f"docs/reliability.md does not list: {shown}"


# --- the network filesystem warning ----------------------------------------------------------


def test_a_database_on_a_network_filesystem_is_used_with_a_warning(tmp_path: Path) -> None:
    """No NFS server here: in a private mount namespace, a mount table naming ``nfs4`` for the
    database's directory is bind-mounted over the child's own ``/proc/PID/mounts``, which is
    what the limiter reads. The kernel serves it; nothing in Python is replaced."""
    share = tmp_path / "share"
    share.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export {share} nfs4 rw,relatime 0 0\n")
    code = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from collet_limiter import Limiter
        with Limiter(sys.argv[1]) as limiter:
            limiter.acquire("p/m").release()
        print("USED")
        """
    )
    db = share / "limiter.db"
    result = run_with_mount_table(mounts, sys.executable, "-c", code, str(db))
    assert result.stdout.strip() == "USED", result.stderr
    assert (
        f"WARNING {db} is on a network filesystem: SQLite's WAL mode needs a local one (shared "
        "memory and POSIX locks); limits may not hold across hosts"
    ) in result.stderr


# --- no SQL built by string formatting -------------------------------------------------------

# (file, the formatted text) allowed, and why. Nothing else in src/ may format SQL.
ALLOWED_FORMATTED_SQL = {
    ("_engine.py", "PRAGMA busy_timeout = {}"): (
        "an int() of a value pydantic validated as an int >= 0; PRAGMA takes no parameters "
        "(and pysqlite's connect(timeout=...) already sets the same busy timeout)"
    ),
    ("_engine.py", "PRAGMA {}"): "the name comes from a fixed tuple of three pragma names",
    ("_doctor.py", "SELECT count(*) FROM {}"): "the table comes from a fixed tuple of names",
    (
        "_engine.py",
        "BEGIN; SELECT extract(epoch FROM clock_timestamp()) FROM pg_advisory_xact_lock({})",
    ): (
        "int() of Target.lock_key, a hash of the group's name; a query without parameters is "
        "what lets BEGIN and the lock travel in one round trip"
    ),
}
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|DROP|ALTER|BEGIN|ATTACH|VACUUM|WHERE)\b"
)


def formatted_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text with each hole as {}) of every f-string, %-format and str.format call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            found.append((node.lineno, text))
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, (ast.Mod, ast.Add))
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
        ):
            found.append((node.lineno, node.left.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
        ):
            found.append((node.lineno, str(node.func.value.value)))
    return found


def test_no_sql_is_built_by_string_formatting_in_src() -> None:
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for line, text in formatted_strings(ast.parse(path.read_text())):
            if SQL_WORDS.search(text) and (path.name, text) not in ALLOWED_FORMATTED_SQL:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert offenders == [], "SQL built by formatting; use bound parameters:\n" + "\n".join(
        offenders
    )


def test_the_sql_formatting_check_finds_what_it_looks_for() -> None:
    tree = ast.parse(
        'conn.execute(f"SELECT * FROM leases WHERE id = {lease_id}")\n'
        'conn.execute("DELETE FROM waiters WHERE id = %s" % ticket)\n'
        'conn.execute("UPDATE models SET concurrency_limit = {}".format(limit))\n'
        'conn.execute(text("SELECT 1 WHERE 1 = :one"), {"one": 1})\n'
    )
    found = [text for _, text in formatted_strings(tree) if SQL_WORDS.search(text)]
    assert found == [
        "SELECT * FROM leases WHERE id = {}",
        "DELETE FROM waiters WHERE id = %s",
        "UPDATE models SET concurrency_limit = {}",
    ]
