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
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from collet_limiter import AcquireTimeout, Limiter

from ._main import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_SIGNAL_BASE,
    error,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

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


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What ``run`` was asked to do."""

    primary: ModelKey
    chain: tuple[ModelKey, ...]
    command: tuple[str, ...]
    timeout: float | None
    holder: str | None
    timeout_exit_code: int


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


def exit_status(wait_status: int) -> int:
    """A shell's exit status for a child's wait status: its code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else EXIT_SIGNAL_BASE - code


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
                return _supervise(lease, request.command, waited_for, original_mask)
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
) -> int:
    """Run the command to its end, forwarding signals; its exit status."""
    pid = _spawn(command, child_environment(lease), original_mask)
    if pid < 0:
        return -pid
    while True:
        info = signal.sigtimedwait(waited_for, SAFETY_POLL_SECS)
        if info is not None and info.si_signo != signal.SIGCHLD and info.si_code != SI_KERNEL:
            with contextlib.suppress(ProcessLookupError):  # it just exited: waitpid collects it
                os.kill(pid, info.si_signo)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return exit_status(status)
