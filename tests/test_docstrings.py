"""Every docstring example in the package runs (doctest), so the API docs cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import useful_data

MODULES = sorted(m.name for m in pkgutil.walk_packages(useful_data.__path__, prefix="useful_data."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_api_is_small_and_documented():
    for name in useful_data.__all__:
        obj = getattr(useful_data, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"
