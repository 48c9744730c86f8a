"""FedGMA on Flower: gradient-masked federated averaging with PyTorch clients."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_attributes(
    package: str, module_of: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562): ``name`` is imported from its
    submodule ``module_of[name]`` on first use, then kept on the package; ``dir()`` lists
    those names, the package's public API, loaded or not.

    The library's packages use it so that a ClientApp, which starts once per message and
    needs one constant of ``fedgma.loop``, does not load the round loop and the strategies.
    """

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module_of[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(module_of)

    return __getattr__, __dir__
