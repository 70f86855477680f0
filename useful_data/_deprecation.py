"""Old import paths that moved in 1.0: each still resolves for one release, with a warning.

A module whose public names moved or became private sets, at its end::

    __getattr__ = moved_names(__name__, {"old_name": "useful_data.new.module:new_name"})

``from useful_data.old import old_name`` then warns ``DeprecationWarning`` naming the new path
and returns the object found there; any other missing name is the usual ``AttributeError``.
A name that is gone, with no object to return, maps to ``"!<what to do instead>"``: importing it
raises ``ImportError`` with that text.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names"]


def _resolve(target: str) -> Any:
    module_name, _, path = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for attribute in path.split("."):  # "Class.method" reaches a method
        found = getattr(found, attribute)
    return found


def moved_names(module: str, moves: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for names that moved out of ``module``.

    Args:
        module: The module's ``__name__``.
        moves: Old attribute name to new location, ``"package.module:name"`` (or
            ``"package.module:Class.method"``); a location in a ``_module`` or with a
            ``_name`` is private now (the warning says so); ``"!text"`` marks a removed name, whose
            import raises ``ImportError`` with ``text``.

    Returns:
        The ``__getattr__`` (PEP 562) to assign in ``module``.
    """

    def __getattr__(name: str) -> Any:
        target = moves.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if target.startswith("!"):
            raise ImportError(f"{module}.{name} was removed in useful-data 1.0: {target[1:]}")
        new_module, _, new_name = target.partition(":")
        if any(part.startswith("_") for part in (*new_module.split("."), new_name)):
            hint = (
                f"{module}.{name} is private since useful-data 1.0 ({target}) and will be "
                "removed in 1.1; see the API reference for the public replacement"
            )
        else:
            hint = (
                f"{module}.{name} moved to {new_module}.{new_name} in useful-data 1.0; "
                f"import it from there (the old path will be removed in 1.1)"
            )
        warnings.warn(hint, DeprecationWarning, stacklevel=2)
        return _resolve(target)

    return __getattr__
