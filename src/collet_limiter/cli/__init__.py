"""The ``collet-limiter`` command line: a thin layer over the public API.

Nothing here is imported by ``import collet_limiter``: click is imported when the command line
starts, and rich only by the commands that draw tables (never by ``run``, which must start fast).
"""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, *, prog_name: str = "collet-limiter") -> None:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and exit with its status.

    The garbage collector is off while the command line imports what it needs: the imports
    make some 90,000 objects the collector tracks, none of them garbage, and the collections
    they would set off cost a quarter to a third of ``run``'s start (benchmarks/run_overhead.py
    with ``--baseline``). Each command turns it back on once its imports are done
    (``_main.imports_done``).
    """
    gc.disable()
    from . import _main

    _main.gc_paused = True
    sys.exit(_main.run_main(argv, prog_name=prog_name))


__all__ = ["main"]
