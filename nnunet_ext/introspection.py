"""Class lookup across a package, for the error messages that list what a name could have been."""

from __future__ import annotations

import importlib
import inspect
import pkgutil


def subclass_names(package, base: type) -> set[str]:
    """Names of the subclasses of ``base`` (``base`` included) defined or imported in any module of ``package``;
    modules that fail to import (an optional dependency missing) are left out."""
    names = set()
    for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            module = importlib.import_module(m.name)
        except Exception:  # noqa: BLE001  a variant module needing an optional dependency
            continue
        names |= {k for k, v in vars(module).items() if inspect.isclass(v) and issubclass(v, base)}
    return names
