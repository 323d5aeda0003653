"""Names of a package loaded from their submodules on first use (PEP 562 ``__getattr__``), so
that importing the package, or one light submodule of it, imports nothing heavy."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``sources`` maps a name to the submodule that
    defines it; the value is imported on first access and cached in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(package)
        value = getattr(importlib.import_module(f".{sources[name]}", package), name)
        setattr(module, name, value)
        return value

    return __getattr__
