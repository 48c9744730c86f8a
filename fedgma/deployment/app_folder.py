"""The Flower app folder that the tools which launch ``flwr run`` submit, its default run
settings, and ``key=value`` overrides.

Overrides follow Flower's ``--run-config`` rules: each value is read as TOML
(``3``, ``0.5``, ``true``, ``"text"``). As a convenience on the command line, a
bare word that is not valid TOML (``strategy=fedavg``) is taken as a string.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from pathlib import Path
from typing import Any

# Where a source checkout keeps pyproject.toml; an installed package has none there.
SOURCE_DIR = Path(__file__).resolve().parent.parent.parent
# key=value pairs of a --run-config string, quoted values kept whole (as flwr.common.config reads them)
_PAIR = re.compile(r"""(\S+?)=('[^']*'|"[^"]*"|\S+)""")


class AppFolderNotFound(FileNotFoundError):
    """The tools that run this repository's Flower app need its folder: a clone."""


def _is_app_folder(folder: Path) -> bool:
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return project.get("project", {}).get("name") == "fedgma" and "app" in project.get("tool", {}).get("flwr", {})


def app_dir(explicit: Path | None = None) -> Path:
    """The Flower app folder (``pyproject.toml`` with ``[tool.flwr.app]``) that ``flwr run``
    submits: ``explicit`` (a tool's ``--app DIR``) if given, else the source checkout this
    package runs from, else the current directory when it is one (a clone, the image's /app).

    Raises
    ------
    AppFolderNotFound
        With a one-line message saying what is needed.
    """
    if explicit is not None:
        if _is_app_folder(explicit):
            return explicit.resolve()
        raise AppFolderNotFound(f"--app {explicit} is not this project's Flower app folder "
                                "(pyproject.toml with [tool.flwr.app])")
    for folder in (SOURCE_DIR, Path.cwd()):
        if _is_app_folder(folder):
            return folder
    raise AppFolderNotFound(
        "needs this repository's Flower app folder (pyproject.toml with [tool.flwr.app]), which an "
        "installed package does not carry: give --app DIR, or run it in a clone of the repository "
        "(./scripts/setup.sh there)"
    )


def app_defaults(app: Path | None = None) -> dict[str, Any]:
    """The default run settings: ``[tool.flwr.app.config]`` of the app's ``pyproject.toml``
    (``app``: its folder; default: :func:`app_dir`)."""
    pyproject = (app or app_dir()) / "pyproject.toml"
    return dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])


def parse_override(item: str) -> tuple[str, Any]:
    """``"tau=0.8"`` -> ``("tau", 0.8)``; raises ``argparse.ArgumentTypeError`` if not key=value."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (a timeout of 0 would stop a run at once)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def positive_count(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_overrides(text: str) -> dict[str, Any]:
    """``"a=1 b='x y'"`` -> ``{"a": 1, "b": "x y"}``: a whole ``--run-config`` string.

    Raises ``argparse.ArgumentTypeError`` naming any part that is not a key=value pair.
    """
    pairs = _PAIR.findall(text)
    leftover = _PAIR.sub(" ", text).split()
    if leftover:
        raise argparse.ArgumentTypeError(f"expected key=value pairs, got {' '.join(leftover)!r}")
    return dict(parse_override(f"{key}={value}") for key, value in pairs)
