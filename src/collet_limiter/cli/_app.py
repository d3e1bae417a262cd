"""The click commands: option parsing and dispatch; the work happens in the modules they call.

Global options (``--db``, ``--config``, ``-v``, ``-q``) are accepted before the command and after
it (``collet-limiter status --db x``), the later one winning. Modules that draw with rich are
imported inside the commands that need them, so ``run`` never loads rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from collet_limiter import Config, ModelKey, __version__, load_agent_chain, load_config

from ._main import EXIT_CONFIG, EXIT_PROBLEMS, EXIT_TIMEOUT, imports_done, setup_logging

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime, timedelta

    from collet_limiter import Diagnosis, Inspector

CONTEXT: Final[dict[str, Any]] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

F = TypeVar("F", bound="Callable[..., Any]")  # a function that click decorates


@dataclass
class Settings:
    """The global options, from the group and the command."""

    db: str | None = None
    config_path: str | None = None
    verbose: int = 0
    quiet: bool = False
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        """The config in use: ``--config``, else ``$COLLET_LIMITER_CONFIG``, else defaults."""
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def inspector(self, *, missing_ok: bool = False) -> Inspector:
        """A read-only view of the database (creates and writes nothing).

        ``missing_ok``: a database nothing has created yet reads as empty under the config in
        use (``Inspector.exists`` False) instead of being an error.
        """
        from collet_limiter import Inspector

        return Inspector(self.db, config=self.config(), missing_ok=missing_ok)


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False or value == 0:
            return
        settings = ctx.ensure_object(Settings)
        if name == "verbose":
            settings.verbose += int(value)
        else:
            setattr(settings, name, value)

    return store


def global_options(func: F) -> F:
    """Add --db, --config, -v and -q (to the group and to every command)."""
    options = (
        click.option(
            "--db",
            metavar="PATH",
            expose_value=False,
            callback=_setter("db"),
            help="The database: a SQLite file, or postgresql+psycopg://USER@HOST/DB?schema=GROUP "
            "(default: $COLLET_LIMITER_DB, the config's [limiter] db, "
            "else $XDG_STATE_HOME/collet-limiter/limiter.db).",
        ),
        click.option(
            "--config",
            metavar="PATH",
            expose_value=False,
            callback=_setter("config_path"),
            help="collet's TOML config (default: $COLLET_LIMITER_CONFIG, else built-in defaults).",
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            expose_value=False,
            callback=_setter("verbose"),
            help="Log the limiter's decisions to stderr (-v info, -vv debug).",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_setter("quiet"),
            help="Log errors only (no warnings such as 'queueing for the primary').",
        ),
    )
    for option in reversed(options):
        func = option(func)
    return func


def settings(ctx: click.Context) -> Settings:
    """The global options in force for this command, with logging set up accordingly."""
    found = ctx.ensure_object(Settings)
    setup_logging(found.verbose, quiet=found.quiet)
    return found


def _key(_ctx: click.Context, _param: click.Parameter, value: str | None) -> ModelKey | None:
    if value is None:
        return None
    key = ModelKey.parse(value)
    if key is None:
        raise click.BadParameter(f"{value!r} is not PROVIDER/MODEL (e.g. zai-coding/glm-5)")
    return key


def _since(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | timedelta | None:
    if value is None:
        return None
    from ._stats import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _chain(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[ModelKey, ...]:
    chain: list[ModelKey] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            key = ModelKey.parse(item)
            if key is None:
                raise click.BadParameter(f"{item.strip()!r} is not PROVIDER/MODEL")
            chain.append(key)
    return tuple(chain)


def _cooldowns(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[int, float | None]:
    from ._run import parse_cooldown_on_exit

    try:
        return parse_cooldown_on_exit(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def full_chain(fallback: tuple[ModelKey, ...], agent: str | None) -> tuple[ModelKey, ...]:
    """``--fallback`` entries, then the agent file's ``providers:`` chain."""
    return fallback + (tuple(load_agent_chain(agent)) if agent else ())


def chain_options(func: F) -> F:
    """--fallback and --agent, shared by run and explain."""
    func = click.option(
        "--agent",
        metavar="AGENT.md",
        help="Append the fallback chain of this collet agent file (its 'providers:').",
    )(func)
    return click.option(
        "--fallback",
        metavar="A/B,C/D",
        multiple=True,
        callback=_chain,
        help="Fallback chain, tried in order after the model (repeatable).",
    )(func)


def json_option(func: F) -> F:
    """--json (the documented, stable shapes of docs/cli.md)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/cli.md).")(
        func
    )


class MissingExtraError(click.ClickException):
    """An optional dependency of a command is not installed (exit 3, as for the environment)."""

    exit_code = EXIT_CONFIG


class Commands(click.Group):
    """Lists the commands in the order they were defined (the order of the README)."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: ARG002 - click API
        """The commands in definition order."""
        return list(self.commands)


@click.group(cls=Commands, context_settings=CONTEXT, invoke_without_command=True)
@global_options
@click.version_option(
    __version__, "--version", prog_name="collet-limiter", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Per-model concurrency limits for LLM calls, shared by every process on this machine.

    Gate a command with a permit (run), see who holds what (status, leases, watch, explain),
    what happened (stats), export it to Prometheus (metrics), clean up (reap), check the
    database (init, doctor), or watch it all work (demo).
    Exit statuses: 0 ok, 1 problems found, 2 usage, 3 config, 4 database, 75 run timeout;
    run otherwise exits with its command's status.
    """
    if ctx.invoked_subcommand != "run":  # run turns it back on after its own imports
        imports_done()
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option(
    "--model",
    "-m",
    required=True,
    metavar="PROVIDER/MODEL",
    callback=_key,
    help="The model the command wants.",
)
@chain_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECS",
    help="Give up after waiting this long: run nothing, exit 75 (default: wait forever).",
)
@click.option(
    "--timeout-exit-code",
    type=click.IntRange(0, 255),
    default=EXIT_TIMEOUT,
    show_default=True,
    metavar="N",
    help="Exit status after a timeout (as flock -E).",
)
@click.option("--holder", metavar="LABEL", help="Label shown by leases (default: the command).")
@click.option(
    "--cooldown-on-exit",
    metavar="CODE[:SECS]",
    multiple=True,
    callback=_cooldowns,
    help="When the command exits with CODE, the model it held cools down for every process for "
    "SECS seconds (default: [limiter] cooldown_secs), as after a 429 (repeatable).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@global_options
@click.pass_context
def run(
    ctx: click.Context,
    *,
    model: ModelKey,
    fallback: tuple[ModelKey, ...],
    agent: str | None,
    timeout: float | None,
    timeout_exit_code: int,
    holder: str | None,
    cooldown_on_exit: dict[int, float | None],
    command: tuple[str, ...],
) -> int:
    """Run COMMAND holding a permit for a model (or a fallback), like flock(1).

    Acquires MODEL, else the first fallback with room (the chain, a model of the same or one
    lower cost tier, a CLI provider), else waits its turn in the fair queue. COMMAND runs
    without a shell, with COLLET_LIMITER_PROVIDER, _MODEL, _KEY, _VIA and _PRIMARY in its
    environment; the permit is held until it exits, and run exits with its status (128+N if
    signal N killed it). SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on.
    run prints nothing to stdout. With --cooldown-on-exit, a command that exits with a listed
    status (say, a wrapper's 75 after a 429) cools its model down: other runs go to fallbacks
    or wait until the cooldown ends.

    \b
    Example:
      collet-limiter run --model zai/glm-5 --fallback zai/glm-4.7 -- claude -p "fix the bug"
      collet-limiter run -m zai/glm-5 --cooldown-on-exit 75:60 -- ./ask-glm.sh
    """
    from ._run import RunRequest, default_holder
    from ._run import run as run_command

    imports_done()
    found = settings(ctx)
    request = RunRequest(
        primary=model,
        chain=full_chain(fallback, agent),
        command=command,
        timeout=timeout,
        holder=holder if holder is not None else default_holder(command),
        timeout_exit_code=timeout_exit_code,
        cooldown_on_exit=cooldown_on_exit,
    )
    return run_command(request, db=found.db, config=found.config())


@cli.command(context_settings=CONTEXT)
@json_option
@global_options
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> int:
    """Each model's limit, use and queue, and the global cap.

    Before anything has run (no database yet) it shows the config's models, none in use.
    """
    from ._output import dumps, missing_line, status_data

    with settings(ctx).inspector(missing_ok=True) as inspector:
        result = inspector.status()
        exists = inspector.exists
        if as_json:
            click.echo(dumps(status_data(result, db=inspector.db, exists=exists)))
            return 0
        from ._tables import make_console, status_table

        if not exists:
            click.echo(missing_line(inspector.db))
        make_console().print(status_table(result))
    return 0


@cli.command(context_settings=CONTEXT)
@json_option
@global_options
@click.pass_context
def leases(ctx: click.Context, as_json: bool) -> int:
    """Who holds what: each lease's model, how it was granted, holder, age, expiry; the queue."""
    from ._output import dumps, leases_data, missing_line

    with settings(ctx).inspector(missing_ok=True) as inspector:
        # Ages and expiries against the database's clock (the server's, on PostgreSQL).
        held, queued, now = inspector.leases(), inspector.waiters(), inspector.now()
        exists = inspector.exists
        if as_json:
            data = leases_data(held, queued, db=inspector.db, now=now, exists=exists)
            click.echo(dumps(data))
            return 0
        from ._tables import leases_table, make_console, waiters_table

        if not exists:
            click.echo(missing_line(inspector.db))
        console = make_console()
        console.print(leases_table(held, now=now))
        if queued:
            console.print(waiters_table(queued, now=now))
    return 0


@cli.command(context_settings=CONTEXT)
@click.option(
    "-n",
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECS",
    help="Seconds between refreshes.",
)
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N refreshes.")
@global_options
@click.pass_context
def watch(ctx: click.Context, interval: float, count: int | None) -> int:
    """A live view of status, leases and the queue; q or Ctrl-C quits.

    When stdout is not a terminal it prints one status line per refresh instead. Before
    anything has run it shows the config's models, and the database once something creates it.
    """
    from ._watch import watch as watch_view

    with settings(ctx).inspector(missing_ok=True) as inspector:
        return watch_view(inspector, interval=interval, count=count)


@cli.command(context_settings=CONTEXT)
@click.argument("model", metavar="PROVIDER/MODEL", callback=_key)
@chain_options
@json_option
@global_options
@click.pass_context
def explain(
    ctx: click.Context,
    *,
    model: ModelKey,
    fallback: tuple[ModelKey, ...],
    agent: str | None,
    as_json: bool,
) -> int:
    """The candidates an acquire would try right now, in order, and why each is or is not taken.

    Before anything has run (no database yet) every candidate has room, under the config in use.
    """
    from ._output import dumps, explanation_data, missing_line

    chain = full_chain(fallback, agent)
    with settings(ctx).inspector(missing_ok=True) as inspector:
        result = inspector.explain(model, chain)
        exists = inspector.exists
        if as_json:
            data = explanation_data(result, chain=chain, db=inspector.db, exists=exists)
            click.echo(dumps(data))
            return 0
        from ._tables import explain_table, explain_verdict, make_console

        if not exists:
            click.echo(missing_line(inspector.db))
        console = make_console()
        console.print(explain_table(result))
        console.print(explain_verdict(result))
    return 0


@cli.command(context_settings=CONTEXT)
@click.option(
    "--since",
    metavar="30m|1h|2d|TIME",
    callback=_since,
    help="The window: that long before now (30s, 30m, 1h, 2d), or from an ISO 8601 time "
    "(2026-12-03T11:00, UTC if naive). Default: all the history kept ([limiter] history_days).",
)
@click.option(
    "--model",
    "-m",
    metavar="PROVIDER/MODEL",
    callback=_key,
    help="This model only (the total is then its figures, and the table leaves it out).",
)
@json_option
@global_options
@click.pass_context
def stats(
    ctx: click.Context,
    *,
    since: datetime | timedelta | None,
    model: ModelKey | None,
    as_json: bool,
) -> int:
    """Per model and in total, from the history: acquisitions, waits, timeouts, 429s, peaks.

    For each model: acquisitions (and how many were not granted as asked: queue, chain,
    capability, cli), the wait from request to grant (p50, p95, p99, max, in ms), timeouts,
    reclaimed and lost leases, reported refusals (429s), time spent cooling down, and the
    most leases held at once. Counts the history kept ([limiter] history_days, 7 by default).
    Before anything has run (no database yet) it shows the config's models with zeros.

    \b
    Example:
      collet-limiter stats --since 1h
      collet-limiter stats --since 2026-12-03T09:00 --model zai/glm-5 --json
    """
    from ._output import dumps, missing_line
    from ._stats import stats_data, stats_table, window_line

    found = settings(ctx)
    history_days = found.config().limiter.history_days
    with found.inspector(missing_ok=True) as inspector:
        result = inspector.stats(since=since, model=model)
        if as_json:
            click.echo(dumps(stats_data(result, db=inspector.db, history_days=history_days)))
            return 0
        from ._tables import make_console

        if not result.exists:
            click.echo(missing_line(inspector.db))
        click.echo(window_line(result, asked=since, history_days=history_days))
        console, table = make_console(), stats_table(result, total=model is None)
        if not console.is_terminal:  # a file or a pipe: whole rows, however long
            unbounded = console.options.update_width(10_000)
            console.width = max(console.width, console.measure(table, options=unbounded).maximum)
        console.print(table)
    return 0


@cli.command(context_settings=CONTEXT)
@click.option(
    "--serve",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve GET /metrics on 127.0.0.1:PORT (loopback only; 0: any free port), reading afresh "
    "for each scrape, until SIGINT or SIGTERM.",
)
@global_options
@click.pass_context
def metrics(ctx: click.Context, serve: int | None) -> int:
    """The state in the Prometheus text format: per model limits, use, queue and cooldowns.

    Also counters from the history: events by kind, acquisitions (counted as each lease ends)
    and reported refusals; they never go down, pruning included. Prints it once, for
    node_exporter's textfile collector, or with --serve PORT answers scrapes on 127.0.0.1
    only. Before anything has run it shows the config's models with nothing in use, counters
    at 0, and database_exists 0. Needs prometheus-client: pip install
    'collet-limiter[metrics]' (without it, exit 3).

    \b
    Example:
      dir=/var/lib/node_exporter/textfile
      collet-limiter metrics > $dir/collet.prom.$$ && mv $dir/collet.prom.$$ $dir/collet.prom
      collet-limiter metrics --serve 9464
    """
    found = settings(ctx)
    try:
        from ._metrics import PortUnavailableError, exposition, listen
        from ._metrics import serve as serve_scrapes
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "prometheus_client":
            raise
        raise MissingExtraError(
            "metrics needs prometheus-client, which is not installed: pip install "
            "'collet-limiter[metrics]'"
        ) from None
    with found.inspector(missing_ok=True) as inspector:
        if serve is None:
            click.echo(exposition(inspector), nl=False)
            return 0
        try:
            server = listen(serve, inspector)
        except PortUnavailableError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--serve'") from None

        def announce(line: str) -> None:
            if not found.quiet:
                click.echo(f"collet-limiter: {line}; Ctrl-C or SIGTERM stops", err=True)

        return serve_scrapes(server, announce=announce)


@cli.command(context_settings=CONTEXT)
@json_option
@global_options
@click.pass_context
def reap(ctx: click.Context, as_json: bool) -> int:
    """Remove expired leases and tickets and those of dead holders now; say what was removed."""
    from ._output import dumps, reaped_data, reaped_lines

    with settings(ctx).inspector() as inspector:
        removed = inspector.reap()
        if as_json:
            click.echo(dumps(reaped_data(removed, db=inspector.db)))
        else:
            for line in reaped_lines(removed):
                click.echo(line)
    return 0


def _report(diagnosis: Diagnosis, *, as_json: bool, created: bool | None = None) -> int:
    from ._output import diagnosis_lines, dumps

    if as_json:
        data = diagnosis.as_dict()
        if created is not None:
            data["created"] = created
        click.echo(dumps(data))
    else:
        for line in diagnosis_lines(diagnosis, created=created):
            click.echo(line)
    return 0 if diagnosis.ok else EXIT_PROBLEMS


@cli.command(context_settings=CONTEXT)
@json_option
@global_options
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> int:
    """Create the database (or upgrade it) and write the config in use to it, then check it."""
    from collet_limiter import Limiter, diagnose

    found = settings(ctx)
    config = found.config()
    before = diagnose(found.db, config=config)
    Limiter(found.db, config=config).close()
    return _report(diagnose(found.db, config=config), as_json=as_json, created=not before.exists)


@cli.command(context_settings=CONTEXT)
@json_option
@global_options
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> int:
    """Check the database without changing it: schema, journal mode, permissions, config.

    Also says whether the database holds another config than the one in use, and whether it
    is on a network filesystem (where WAL is unsafe). On PostgreSQL: the server's version, the
    group's schema revision, the server's clock against this host's, and whether LISTEN/NOTIFY
    works through the connection. Exits 1 when it finds a problem.
    """
    from collet_limiter import diagnose

    found = settings(ctx)
    return _report(diagnose(found.db, config=found.config()), as_json=as_json)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--workers",
    type=click.IntRange(2, 32),
    default=6,
    show_default=True,
    metavar="N",
    help="Worker processes.",
)
@click.option(
    "--duration",
    type=click.FloatRange(1, 50),
    default=12.0,
    show_default=True,
    metavar="SECS",
    help="How long they compete (longer if a fallback kind has not happened yet).",
)
@click.option("--keep", is_flag=True, help="Keep the demo database and print its path.")
@global_options
@click.pass_context
def demo(ctx: click.Context, workers: int, duration: float, keep: bool) -> int:
    """Real worker processes compete for three models on a temporary database.

    Shows the live view while they run, then a summary read back by SQL: peak holders per
    model against its limit, fallbacks by kind, queue waits with p50/p99. Uses its own
    temporary database and built-in config (--db and --config do not apply).
    """
    from ._demo import run_demo

    settings(ctx)
    return run_demo(workers=workers, duration=duration, keep=keep)
