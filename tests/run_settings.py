"""The app's default run settings, read from pyproject.toml, for tests to override."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS: dict = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def settings(**overrides) -> dict:
    """Defaults with ``snake_case`` keyword overrides turned into hyphenated keys."""
    return {**DEFAULTS, **{k.replace("_", "-"): v for k, v in overrides.items()}}
