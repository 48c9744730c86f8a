"""The fenced code blocks of a Markdown file, by section, for tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def code_blocks(path: Path, section: str | None = None, language: str | None = None) -> list[str]:
    """The code of each fenced block in ``path`` (under the ``## section`` heading when given,
    up to the next heading of that level), in order; only ``language`` blocks when given."""
    text = path.read_text()
    if section is not None:
        start = text.index(f"\n## {section}\n")
        following = text.find("\n## ", start + 1)
        text = text[start:following if following != -1 else len(text)]
    return [code for lang, code in _FENCE.findall(text) if language is None or lang == language]
