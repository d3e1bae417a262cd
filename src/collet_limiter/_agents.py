"""Reading an agent's fallback chain from the frontmatter of its ``.md`` definition.

collet's agent files start with YAML-style frontmatter between ``---`` lines; the chain is the
``providers`` key, written ``providers: a/b, c/d``, as a flow list ``[a/b, c/d]``, or as a block
list of ``- a/b`` lines. Only this key is read, so no YAML library is needed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from ._errors import ConfigError, InvalidKeyError
from ._keys import ModelKey

_KEY_LINE: Final = re.compile(r"^providers\s*:\s*(.*)$")
_ITEM_LINE: Final = re.compile(r"^\s*-\s*(.*)$")


def _unquote(item: str) -> str:
    item = item.strip()
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
        return item[1:-1].strip()
    return item


def _strip_comment(line: str) -> str:
    return re.split(r"\s+#", line, maxsplit=1)[0].rstrip()


def frontmatter(text: str) -> list[str] | None:
    """The frontmatter lines of an agent file, None when it has none."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            return lines[1:index]
    return None


def _providers_items(lines: list[str]) -> list[str] | None:
    for index, line in enumerate(lines):
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        value = _strip_comment(match.group(1)).strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        if value:
            return [_unquote(item) for item in value.split(",") if item.strip()]
        items = []
        for follow in lines[index + 1 :]:
            item = _ITEM_LINE.match(follow)
            if item is None:
                if follow.strip() and not follow.startswith((" ", "\t")):
                    break
                continue
            items.append(_unquote(_strip_comment(item.group(1))))
        return items
    return None


def load_agent_chain(path: str | os.PathLike[str]) -> list[ModelKey]:
    """The fallback chain of an agent definition file: its frontmatter's ``providers``.

    Unlike ``parse_providers_chain``, which skips bad items as collet does, an agent file with a
    malformed entry is an error naming the file and the entry, since the author meant something.
    A file without frontmatter or without ``providers`` has an empty chain.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: agent file not found", path=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read agent file: {exc}", path=source) from None
    lines = frontmatter(text)
    items = _providers_items(lines) if lines is not None else None
    chain: list[ModelKey] = []
    for item in items or []:
        key = ModelKey.parse(item)
        if key is None:
            raise InvalidKeyError(
                f"{source}: providers: {item!r} is not 'provider/model'", path=source, value=item
            )
        chain.append(key)
    return chain
