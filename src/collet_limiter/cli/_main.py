"""The entry point's error handling: every user error is one line on stderr and an exit code.

click runs in non-standalone mode so that its usage errors, which it would print as three lines
(usage, hint, error), come here and leave as one line, like the library's own errors.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import TYPE_CHECKING, Final

import click

from collet_limiter import AcquireTimeout, ConfigError, LimiterError, StorageError

if TYPE_CHECKING:
    from collections.abc import Sequence

PROG: Final = "collet-limiter"

# Exit statuses (documented in README.md and docs/cli.md; tests/test_cli_errors.py checks them).
EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1  # doctor/init found a problem; any other limiter error
EXIT_USAGE: Final = 2  # unknown command or option, bad argument or provider/model key
EXIT_CONFIG: Final = 3  # config file, agent file or environment variable missing or invalid
EXIT_DATABASE: Final = 4  # database cannot be opened, created, read or written
EXIT_INTERNAL: Final = 70  # a bug (EX_SOFTWARE): please report it
EXIT_TIMEOUT: Final = 75  # run: no permit within --timeout (EX_TEMPFAIL), as flock -E
EXIT_CANNOT_EXECUTE: Final = 126  # run: the command exists but cannot be executed
EXIT_NOT_FOUND: Final = 127  # run: the command was not found
EXIT_SIGNAL_BASE: Final = 128  # 128+N: the command died of signal N, or run was stopped by it

_handler: logging.Handler | None = None
# Whether ``cli.main`` turned the garbage collector off for the imports (``imports_done``).
gc_paused = False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: int, *, quiet: bool) -> None:
    """Send the ``collet_limiter`` logger to stderr: warnings by default, -v info, -vv debug."""
    global _handler  # noqa: PLW0603 - one handler per process, replaced when called again
    logger = logging.getLogger("collet_limiter")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_Formatter())
    logger.addHandler(_handler)
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO)[min(verbose, 1)]
    logger.setLevel(logging.DEBUG if verbose >= 2 and not quiet else level)
    logger.propagate = False


def imports_done() -> None:
    """Collect garbage again, now that the command's imports are done (see ``cli.main``).

    The objects the imports made move to the permanent generation, so later collections of a
    long-running command (``run`` holding a permit for hours, ``watch``) skip them.
    """
    global gc_paused  # noqa: PLW0603 - once per process
    if gc_paused:
        gc_paused = False
        gc.freeze()
        gc.enable()


def error(message: str) -> None:
    """Print one error line on stderr."""
    first = " ".join(message.split())  # one line, whatever the message held
    click.echo(f"{PROG}: {first}", err=True)


def exit_code_for(exc: LimiterError) -> int:
    """The documented exit status of a library error."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, StorageError):
        return EXIT_DATABASE
    if isinstance(exc, AcquireTimeout):
        return EXIT_TIMEOUT
    return EXIT_PROBLEMS


def _usage_error(exc: click.UsageError) -> int:
    command = exc.ctx.command_path if exc.ctx is not None else PROG
    error(f"{exc.format_message().rstrip('.')} (see '{command} --help')")
    return EXIT_USAGE


def run_main(argv: Sequence[str] | None, *, prog_name: str = PROG) -> int:  # noqa: PLR0911 - a return per exit status
    """Run the command line and return its exit status; never raises for a user error."""
    from ._app import cli

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = cli.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.UsageError as exc:
        return _usage_error(exc)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        error("interrupted")
        return EXIT_SIGNAL_BASE + 2
    except click.ClickException as exc:
        error(exc.format_message())
        return exc.exit_code
    except LimiterError as exc:
        error(str(exc))
        return exit_code_for(exc)
    except BrokenPipeError:
        # The reader went away (`collet-limiter leases | head -1`): stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGNAL_BASE + 13
    except Exception as exc:
        if logging.getLogger("collet_limiter").isEnabledFor(logging.DEBUG):
            raise
        error(
            f"internal error: {type(exc).__name__}: {exc} (a bug: please report it; run again "
            "with -vv for the traceback)"
        )
        return EXIT_INTERNAL
    return int(status or 0)
