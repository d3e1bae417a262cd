"""``collet-limiter run``: hold a permit for the whole life of a command, like ``flock(1)``.

Signals. The forwarded signals (and SIGCHLD) are blocked in every thread from the start, and the
main thread takes them one at a time with ``sigtimedwait``. Blocking first, before the Limiter
starts any thread (heartbeat, wake-up watcher), matters: threads inherit the mask, and a
process-directed signal goes to any thread that does not block it, which would die of it or
leave a Python handler for the main thread to run, asleep as it is in a system call.
``sigtimedwait`` also says who sent a signal: the kernel (``SI_KERNEL``) sends the terminal's
Ctrl-C, Ctrl-\\ and hangup to the whole foreground process group, which the command is part of,
so those reach it already and are not sent a second time; anything a process sends (``kill``)
is forwarded.

The command is started with ``posix_spawn`` and the signal mask ``run`` started with, so it sees
the signals as if it had been started directly; waiting in the queue happens in a helper thread,
so that Ctrl-C or SIGTERM while waiting gives the ticket back at once.

Nothing is printed to stdout: the command's output passes through untouched.

``--cooldown-on-exit CODE[:SECS]`` turns the command's exit status into what the library learns
from a provider's 429: when the command ran and ``run`` is about to exit with CODE, the lease's
model is reported (kind ``exit_code``) before the lease is released, so every process passes it
over for SECS seconds (``[limiter] cooldown_secs`` without SECS).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from collet_limiter import AcquireTimeout, Limiter, LimiterError

from ._main import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_SIGNAL_BASE,
    error,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from collet_limiter import Config, Lease, ModelKey

FORWARDED: Final = frozenset(
    {
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    }
)
# Signals that stop a wait in the queue (and that, with nothing to forward them to, end run).
STOPPING: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})
# siginfo.si_code of a signal the kernel generated, such as the terminal's Ctrl-C
# (include/uapi/asm-generic/siginfo.h).
SI_KERNEL: Final = 0x80
# How long sigtimedwait sleeps before looking again anyway. SIGCHLD and the acquiring thread's
# wake-up end each wait at once; this only bounds the cost of a wake-up that was missed.
SAFETY_POLL_SECS: Final = 1.0
# Python ignores these at startup; a child must get them back at their defaults, as
# subprocess's restore_signals does.
RESTORED: Final = tuple(
    sig for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if (sig := getattr(signal, name, None))
)
HOLDER_CHARS: Final = 80
# The longest cooldown --cooldown-on-exit accepts: a day, as the library caps a provider's
# Retry-After. There is no command to end a cooldown early, so a typo must not cool a model
# for a month.
MAX_COOLDOWN_SECS: Final = 86_400.0
COOLDOWN_FORM: Final = "write CODE or CODE:SECS, e.g. 75 or 75:30"

log = logging.getLogger("collet_limiter.cli")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What ``run`` was asked to do."""

    primary: ModelKey
    chain: tuple[ModelKey, ...]
    command: tuple[str, ...]
    timeout: float | None
    holder: str | None
    timeout_exit_code: int
    # Exit status -> cooldown seconds (None: [limiter] cooldown_secs), from --cooldown-on-exit.
    cooldown_on_exit: Mapping[int, float | None]


@dataclass(frozen=True, slots=True)
class Finished:
    """How the command ended: the status ``run`` exits with, and in words for a report."""

    status: int
    how: str  # "exited with 75", "died of SIGKILL, status 137"
    ran: bool = True  # False: it could not be started (127, 126)


def parse_cooldown_on_exit(values: Sequence[str]) -> dict[int, float | None]:
    """``--cooldown-on-exit`` values (``CODE`` or ``CODE:SECS``) as {status: seconds or None}.

    Raises ValueError with a message that names the value, what is wrong, and how to write it.
    """
    parsed: dict[int, float | None] = {}
    for value in values:
        code_text, colon, secs_text = value.strip().partition(":")
        code = _status_code(value, code_text.strip())
        secs = _cooldown_secs(value, secs_text.strip()) if colon else None
        if code in parsed:
            raise ValueError(f"{value!r}: exit status {code} is given twice; give each once")
        parsed[code] = secs
    return parsed


def _status_code(value: str, text: str) -> int:
    if not text:
        raise ValueError(f"{value!r}: CODE is missing; {COOLDOWN_FORM}")
    if "," in value:
        raise ValueError(
            f"{value!r}: one CODE[:SECS] per option; repeat --cooldown-on-exit for more"
        )
    try:
        code = int(text)
    except ValueError:
        raise ValueError(
            f"{value!r}: CODE {text!r} is not an exit status; {COOLDOWN_FORM}"
        ) from None
    if code == 0:
        raise ValueError(
            f"{value!r}: CODE 0 is success, not a refusal; give a status from 1 to 255"
        )
    if not 1 <= code <= 255:
        raise ValueError(f"{value!r}: CODE must be an exit status from 1 to 255")
    return code


def _cooldown_secs(value: str, text: str) -> float:
    if not text:
        raise ValueError(
            f"{value!r}: SECS is missing after ':'; {COOLDOWN_FORM} "
            "(CODE alone cools for [limiter] cooldown_secs)"
        )
    try:
        secs = float(text)
    except ValueError:
        raise ValueError(
            f"{value!r}: SECS {text!r} is not a number of seconds; {COOLDOWN_FORM}"
        ) from None
    if not math.isfinite(secs) or not 0 < secs <= MAX_COOLDOWN_SECS:
        raise ValueError(
            f"{value!r}: SECS must be more than 0 and at most {MAX_COOLDOWN_SECS:g} (a day); "
            "leave it out (CODE alone) for [limiter] cooldown_secs"
        )
    return secs


def default_holder(command: Sequence[str]) -> str:
    """The holder label when none is given: the command line, shortened."""
    text = shlex.join(command)
    return text if len(text) <= HOLDER_CHARS else text[: HOLDER_CHARS - 3] + "..."


def child_environment(lease: Lease) -> dict[str, str]:
    """The command's environment: ours, plus which model it was granted and how."""
    env = dict(os.environ)
    env.update(
        COLLET_LIMITER_PROVIDER=lease.key.provider,
        COLLET_LIMITER_MODEL=lease.key.model,
        COLLET_LIMITER_KEY=str(lease.key),
        COLLET_LIMITER_VIA=lease.via,
        COLLET_LIMITER_PRIMARY=str(lease.primary),
    )
    return env


def finished(wait_status: int) -> Finished:
    """The command's end from its wait status: its code, or as a shell says, 128+N for signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    if code >= 0:
        return Finished(code, f"exited with {code}")
    status = EXIT_SIGNAL_BASE - code
    return Finished(status, f"died of {_signal_name(-code)}, status {status}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def report_exit(lease: Lease, end: Finished, cooldowns: Mapping[int, float | None]) -> None:
    """Cool the lease's model down for everyone when the command ended with a listed status.

    A database error is a warning: the command's own status is what ``run`` exits with.
    """
    if not end.ran or end.status not in cooldowns:
        return
    reason = f"command {end.how}"
    try:
        lease.report_rate_limited(cooldowns[end.status], reason=reason, _kind="exit_code")
    except LimiterError as exc:
        log.warning("could not record the cooldown of %s (%s): %s", lease.key, reason, exc)


def run(request: RunRequest, *, db: str | None, config: Config) -> int:
    """Acquire, run the command, release; return the exit status ``run`` should exit with."""
    waited_for: set[int] = {*FORWARDED, signal.SIGCHLD}
    # An ignored SIGCHLD (inherited across exec) would make the kernel reap the command itself,
    # leaving no exit status to collect and no SIGCHLD to wake on.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    original_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited_for)
    try:
        limiter = Limiter(db, config=config)
        try:
            outcome = _acquire(limiter, request, waited_for)
            if isinstance(outcome, int):
                return outcome
            with outcome as lease:
                end = _supervise(lease, request.command, waited_for, original_mask)
                report_exit(lease, end, request.cooldown_on_exit)  # before the release
                return end.status
        finally:
            limiter.close()
    finally:
        _drain(waited_for)
        signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)


def _drain(signals: set[int]) -> None:
    # Signals that arrived after the command exited have nothing left to act on; taking them
    # here keeps them from killing this process when the mask is restored (in tests, pytest).
    while signals & signal.sigpending():
        signal.sigtimedwait(signals, 0)


def _acquire(limiter: Limiter, request: RunRequest, waited_for: set[int]) -> Lease | int:
    """The lease, or the exit status when none was granted (timeout, interrupted)."""
    main_thread = threading.get_ident()
    outcome: list[Lease | BaseException] = []

    def acquire() -> None:
        try:
            lease = limiter.acquire(
                request.primary, request.chain, timeout=request.timeout, holder=request.holder
            )
            outcome.append(lease)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as is
            outcome.append(exc)
        finally:
            signal.pthread_kill(main_thread, signal.SIGCHLD)  # wake the main thread now

    helper = threading.Thread(target=acquire, name="collet-limiter-run-acquire", daemon=True)
    helper.start()
    while not outcome:
        info = signal.sigtimedwait(waited_for, SAFETY_POLL_SECS)
        if info is not None and info.si_signo in STOPPING:
            # Closing the Limiter ends the wait and removes the ticket (or a lease granted in
            # the meantime) before this process exits with the signal's status.
            limiter.close()
            helper.join()
            name = signal.Signals(info.si_signo).name
            error(f"{name} while waiting for a permit for {request.primary}; nothing was run")
            return EXIT_SIGNAL_BASE + info.si_signo
    helper.join()
    result = outcome[0]
    if isinstance(result, AcquireTimeout):
        error(f"{result}; nothing was run")
        return request.timeout_exit_code
    if isinstance(result, BaseException):
        raise result
    return result


def _spawn(command: Sequence[str], env: dict[str, str], mask: set[int]) -> int:
    """Start the command without a shell: its pid, or minus the exit status when it cannot be."""
    try:
        return os.posix_spawnp(command[0], list(command), env, setsigmask=mask, setsigdef=RESTORED)
    except FileNotFoundError:
        error(f"{command[0]}: command not found")
        return -EXIT_NOT_FOUND
    except PermissionError:
        error(f"{command[0]}: permission denied")
    except OSError as exc:
        error(f"{command[0]}: cannot execute: {exc.strerror or exc}")
    return -EXIT_CANNOT_EXECUTE


def _supervise(
    lease: Lease,
    command: Sequence[str],
    waited_for: set[int],
    original_mask: set[int],
) -> Finished:
    """Run the command to its end, forwarding signals; how it ended."""
    pid = _spawn(command, child_environment(lease), original_mask)
    if pid < 0:
        return Finished(-pid, "could not be started", ran=False)
    while True:
        info = signal.sigtimedwait(waited_for, SAFETY_POLL_SECS)
        if info is not None and info.si_signo != signal.SIGCHLD and info.si_code != SI_KERNEL:
            with contextlib.suppress(ProcessLookupError):  # it just exited: waitpid collects it
                os.kill(pid, info.si_signo)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return finished(status)
