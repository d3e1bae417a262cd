"""``python -m collet_limiter``: the command line, as ``collet-limiter``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="collet-limiter")
