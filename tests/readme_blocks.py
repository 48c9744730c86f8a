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


# Every fenced block of the README and of docs/*.md says, on the line above it, whether a test
# runs it: ``<!-- run by tests/<file>.py -->`` or ``<!-- not run: <reason> -->``.
# tests/lab/test_doc_blocks.py holds every block to that; see docs/tests.md.
RUN_BY = re.compile(r"^<!-- run by (tests/[\w/]+\.py) -->$")
NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->$")
# Regions written by code between markers (fedgma report, fedgma bench): their blocks are the
# writer's, and the results region is checked by tests/lab/test_committed_results.py.
_GENERATED = re.compile(r"^<!-- (results|bench:[\w-]+):begin -->$")
_OPEN = re.compile(r"^(\s*)(`{3,})(\w*)\s*$")


def marked_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """Each fenced block of ``path`` outside generated regions, indented ones included, as
    ``(line number, language, marker)``: the marker is the comment on the nearest non-blank
    line above the fence when it is a run-by or not-run marker, else None."""
    lines = path.read_text().splitlines()
    found: list[tuple[int, str, str | None]] = []
    generated_end = None
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if generated_end is not None:
            if stripped == generated_end:
                generated_end = None
            i += 1
            continue
        region = _GENERATED.match(stripped)
        if region:
            generated_end = f"<!-- {region.group(1)}:end -->"
            i += 1
            continue
        fence = _OPEN.match(lines[i])
        if fence:
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = above if RUN_BY.match(above) or NOT_RUN.match(above) else None
            found.append((i + 1, fence.group(3), marker))
            close = fence.group(2)
            i += 1
            while i < len(lines) and lines[i].strip() != close:
                i += 1
        i += 1
    if generated_end is not None:
        raise ValueError(f"{path}: a generated region has no {generated_end}")
    return found
