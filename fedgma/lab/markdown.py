"""Generated blocks in markdown files: the text between a begin and an end marker, replaced
by the tool that generates it (``fedgma bench``: ``<!-- bench:NAME:begin/end -->``;
``fedgma report``: the results block of the README)."""

from __future__ import annotations


def replace_block(text: str, begin: str, end: str, block: str, append_missing: bool = False) -> str:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``block``.

    Raises
    ------
    ValueError
        If a marker is missing, unless ``append_missing``: then the markers and ``block`` are
        appended.
    """
    if begin not in text or end not in text:
        if append_missing:
            return f"{text.rstrip()}\n\n{begin}\n{block}{end}\n"
        raise ValueError(f"no {begin} ... {end} block to replace")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}{end}{tail}"


def bench_markers(name: str) -> tuple[str, str]:
    """The markers of ``fedgma bench``'s table ``name``."""
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
