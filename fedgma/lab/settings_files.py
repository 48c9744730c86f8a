"""The files generated from the run-settings table (:mod:`fedgma.app.settings`): the
``[tool.flwr.app.config]`` block of the app's ``pyproject.toml`` and the table of
``docs/settings.md`` (between ``<!-- settings:begin/end -->``)."""

from __future__ import annotations

from pathlib import Path

from fedgma.app.settings import markdown_table, pyproject_block

from .markdown import replace_block

SECTION = "[tool.flwr.app.config]\n"
TABLE_MARKERS = ("<!-- settings:begin -->", "<!-- settings:end -->")


def with_pyproject_block(text: str) -> str:
    """``pyproject.toml``'s text with its app-config section's body regenerated."""
    head, rest = text.split(SECTION, 1)
    _, tail = rest.split("\n[", 1) if "\n[" in rest else (rest, None)
    return head + SECTION + pyproject_block() + ("" if tail is None else "\n[" + tail)


def write_settings_files(checkout: Path, check: bool = False) -> list[Path]:
    """Regenerate both files in ``checkout`` (``check``: only compare); returns the stale ones."""
    stale = []
    for path, regenerate in (
        (checkout / "pyproject.toml", with_pyproject_block),
        (checkout / "docs" / "settings.md", lambda text: replace_block(text, *TABLE_MARKERS, markdown_table())),
    ):
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new)
    return stale
