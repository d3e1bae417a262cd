"""The ``collet-limiter`` command line: a thin layer over the public API.

Nothing here is imported by ``import collet_limiter``: click is imported when the command line
starts, and rich only by the commands that draw tables (never by ``run``, which must start fast).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, *, prog_name: str = "collet-limiter") -> None:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and exit with its status."""
    from ._main import run_main

    sys.exit(run_main(argv, prog_name=prog_name))


__all__ = ["main"]
