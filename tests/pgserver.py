"""A throwaway PostgreSQL server for the tests and benchmarks: initdb, pg_ctl start, stop.

The server lives in a temporary directory, listens on a Unix socket there and on a free loopback
port (for the password tests), runs as the ``postgres`` user when we are root (PostgreSQL refuses
to run as root), and is stopped by ``stop()`` whatever state it is in. The binaries are looked for
in ``$COLLET_TEST_PG_BIN``, then Debian's ``/usr/lib/postgresql/<version>/bin``, then ``$PATH``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final

# Names the process that started a server, so a later run can stop one whose owner was killed
# before it could (a SIGKILLed pytest runs no finalizer).
OWNER_FILE: Final = "owner.pid"
# The role the password tests connect as over TCP (scram-sha-256 on loopback).
PASSWORD_USER: Final = "agents"
PASSWORD: Final = "s3cret-Pa55word"


def find_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is missing."""
    explicit = os.environ.get("COLLET_TEST_PG_BIN")
    if explicit:
        return Path(explicit)
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One server: ``start()``, the URLs, ``restart()``, ``stop()``."""

    def __init__(
        self, root: Path | None = None, *, bindir: Path | None = None, durable: bool = False
    ) -> None:
        """``durable``: keep PostgreSQL's default fsync, full_page_writes and synchronous_commit
        (for the benchmarks); by default they are off, which costs a test nothing."""
        found = bindir or find_bin()
        if found is None:
            raise FileNotFoundError(
                "PostgreSQL's initdb was not found (install postgresql-15, or set COLLET_TEST_PG_BIN)"
            )
        self.bindir = found
        self.root = Path(tempfile.mkdtemp(prefix="collet-pg-", dir=root))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = _free_port()
        self.started = False
        self._as_postgres = os.geteuid() == 0
        self.durable = durable

    # --- commands -----------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", *args, check=check)

    def start(self) -> PgServer:
        """initdb (trust on the socket, passwords on loopback) and start; returns self."""
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        self.sockets.mkdir(parents=True)
        self.data.mkdir()
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets, self.data):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.data.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "max_connections = 300\n"
            )
            if not self.durable:
                # A throwaway server: durability buys nothing here and costs CI time.
                conf.write("fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        self._ctl("start", "-l", str(self.root / "server.log"))
        self.started = True
        self.psql(
            f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'; "
            f"GRANT CREATE ON DATABASE postgres TO {PASSWORD_USER};"
        )
        return self

    def psql(self, sql: str) -> str:
        """Run SQL as the superuser over the socket; returns psql's output."""
        psql = shutil.which("psql") or str(self.bindir / "psql")
        done = subprocess.run(
            [psql, "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d",
             "postgres", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.stdout

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is dropped."""
        self._ctl("restart", "-m", "fast", "-l", str(self.root / "server.log"))

    def stop(self) -> None:
        """Stop the server (immediately) and remove its directory; safe to call twice."""
        if self.started:
            self._ctl("stop", "-m", "immediate", check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    # --- addresses ---------------------------------------------------------------------------

    def url(self, schema: str | None = None) -> str:
        """A superuser URL over the Unix socket, for ``schema`` (the limiter group) if given."""
        query = f"host={self.sockets}&port={self.port}"
        if schema is not None:
            query += f"&schema={schema}"
        return f"postgresql+psycopg://postgres@/postgres?{query}"

    def password_url(self, schema: str | None = None) -> str:
        """A URL with a password, over TCP on loopback."""
        url = f"postgresql+psycopg://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"
        return url if schema is None else f"{url}?schema={schema}"


def stop_orphans(bindir: Path, root: Path | None = None) -> None:
    """Stop the servers of earlier runs whose owner process is gone, and remove them."""
    for owner in Path(root or tempfile.gettempdir()).glob(f"collet-pg-*/{OWNER_FILE}"):
        try:
            pid = int(owner.read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            pass  # the owner died: this server is an orphan
        except (ValueError, OSError):
            continue  # unreadable, or another user's live process
        else:
            continue
        data = owner.parent / "data"
        command = [str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        if (data / "postmaster.pid").exists():
            subprocess.run(command, check=False, capture_output=True, timeout=60)
        shutil.rmtree(owner.parent, ignore_errors=True)


def server_from_env() -> PgServer | None:
    """A started server, or None when PostgreSQL is not installed here."""
    bindir = find_bin()
    if bindir is None:
        return None
    root = os.environ.get("COLLET_TEST_PG_ROOT")
    stop_orphans(bindir, Path(root) if root else None)
    server = PgServer(Path(root) if root else None)
    try:
        return server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop()
        raise
