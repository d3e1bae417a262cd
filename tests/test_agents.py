"""Reading a fallback chain from an agent definition's frontmatter."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from collet_limiter import ConfigError, InvalidKeyError, ModelKey, load_agent_chain

if TYPE_CHECKING:
    from pathlib import Path

A, B = ModelKey("zai", "glm-5"), ModelKey("openrouter", "anthropic/claude-sonnet-4")


@pytest.mark.parametrize(
    "frontmatter",
    [
        "providers: zai/glm-5, openrouter/anthropic/claude-sonnet-4",
        "providers: [zai/glm-5, 'openrouter/anthropic/claude-sonnet-4']",
        'providers:\n  - zai/glm-5\n  - "openrouter/anthropic/claude-sonnet-4"  # fallback',
        "name: coder\ndescription: writes code\nproviders: zai/glm-5,openrouter/anthropic/claude-sonnet-4\ntools: [read]",
    ],
)
def test_the_chain_comes_from_the_providers_key(tmp_path: Path, frontmatter: str) -> None:
    path = tmp_path / "coder.md"
    path.write_text(f"---\n{frontmatter}\n---\n\n# Coder\nproviders: not/this\n")
    assert load_agent_chain(path) == [A, B]


def test_a_file_without_frontmatter_or_providers_has_an_empty_chain(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# no frontmatter\nproviders: a/b\n")
    (tmp_path / "b.md").write_text("---\nname: x\n---\n")
    assert load_agent_chain(tmp_path / "a.md") == []
    assert load_agent_chain(tmp_path / "b.md") == []


def test_a_bad_entry_is_an_error_naming_the_file_and_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.md"
    path.write_text("---\nproviders: zai/glm-5, glm-4.7\n---\n")
    with pytest.raises(
        InvalidKeyError, match=r"bad.md: providers: 'glm-4.7' is not 'provider/model'"
    ):
        load_agent_chain(path)


def test_a_missing_agent_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent file not found"):
        load_agent_chain(tmp_path / "missing.md")
