"""Writes ``_sqltext``: the SQLite text of every named ``Prepared`` statement.

    python -m collet_limiter._sqlgen           # rewrite src/collet_limiter/_sqltext.py
    python -m collet_limiter._sqlgen --check   # exit 1 if the file is not what it would write

The Core constructs in ``_claim``, ``_store`` and ``_events`` stay the one definition of each
statement; this compiles them with the dialect a SQLite engine of ours has once connected, and
stores the text, the parameters in the order the driver takes them, and the values the
statement binds itself. Run it after changing a statement: ``tests/test_sqltext.py`` fails until
the file agrees, and a limiter compiles every statement whose text is missing or whose dialect
would compile differently (``_engine.dialect_fingerprint``).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._engine import PREPARED, create_sqlite_engine, dialect_fingerprint, resolve_target

OUTPUT = Path(__file__).with_name("_sqltext.py")

_HEADER = '''"""The SQLite text of every named ``Prepared`` statement (see ``_engine.Prepared``).

Written by ``python -m collet_limiter._sqlgen`` from the Core statements; do not edit.
"""

from __future__ import annotations

from typing import Any, Final

# ``_engine.dialect_fingerprint`` of the dialect that compiled the text below: a limiter whose
# dialect differs compiles the statements itself.
SQLITE_FINGERPRINT: Final = {fingerprint!r}

# name: (SQL, parameter names in the driver's order, values the statement binds itself)
SQLITE: Final[dict[str, tuple[str, tuple[str, ...], dict[str, Any]]]] = {{
'''


def sqlite_dialect() -> Any:
    """The dialect of a SQLite engine of ours, once connected (its capabilities are set then)."""
    with tempfile.TemporaryDirectory(prefix="collet-sqlgen-") as tmp:
        engine = create_sqlite_engine(resolve_target(Path(tmp) / "sqlgen.db"), busy_timeout_ms=0)
        try:
            with engine.connect():
                pass
            return engine.dialect
        finally:
            engine.dispose()


def generate() -> str:
    """The text of ``_sqltext.py`` for the statements as they are defined now."""
    from . import _claim, _events, _store  # noqa: F401 - importing them names their statements

    dialect = sqlite_dialect()
    lines = [_HEADER.format(fingerprint=dialect_fingerprint(dialect))]
    for name in sorted(PREPARED):
        compiled = PREPARED[name].compiled_by(dialect)
        if not compiled.positional:
            raise RuntimeError(f"{name}: SQLite's parameters are expected to be positional")
        for key, value in compiled.defaults.items():
            if ast.literal_eval(repr(value)) != value:
                raise RuntimeError(f"{name}: the bound value {key}={value!r} has no literal")
        lines.append(f"    {name!r}: (\n")
        lines.append(f"        {compiled.sql!r},\n")
        lines.append(f"        {compiled.names!r},\n")
        lines.append(f"        {compiled.defaults!r},\n")
        lines.append("    ),\n")
    lines.append("}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    text = generate()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if text != current:
            print(f"{OUTPUT} is out of date: run python -m collet_limiter._sqlgen", file=sys.stderr)
            return 1
        return 0
    if text != current:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT} ({len(PREPARED)} statements)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
