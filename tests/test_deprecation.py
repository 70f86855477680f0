"""Old import paths: moved names warn and resolve, removed ones say what to do instead."""

from __future__ import annotations

import types

import pytest

from useful_data._deprecation import moved_names


def _module(moves: dict[str, str]) -> types.ModuleType:
    module = types.ModuleType("useful_data.old")
    module.__getattr__ = moved_names("useful_data.old", moves)  # type: ignore[method-assign]
    return module


def test_a_moved_name_warns_with_its_new_path_and_resolves():
    module = _module({"old": "useful_data.selection:Selection"})
    with pytest.warns(DeprecationWarning, match=r"moved to useful_data\.selection\.Selection"):
        found = module.old
    from useful_data import Selection

    assert found is Selection


def test_a_method_path_resolves_to_the_method():
    from useful_data import Selection

    module = _module({"check": "useful_data.selection:Selection.check_fits"})
    with pytest.warns(DeprecationWarning):
        assert module.check is Selection.check_fits


def test_a_private_target_says_private():
    module = _module({"helper": "useful_data._checks:check_int"})
    with pytest.warns(DeprecationWarning, match=r"private since useful-data 1\.0"):
        module.helper  # noqa: B018


def test_a_removed_name_raises_import_error_with_the_advice():
    module = _module({"Gone": "!use useful_data.experimental instead"})
    with pytest.raises(ImportError, match=r"removed in useful-data 1\.0: use useful_data"):
        module.Gone  # noqa: B018


def test_an_unknown_name_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _module({}).nothing  # noqa: B018


def test_check_selection_fits_still_imports_with_a_warning():
    with pytest.warns(DeprecationWarning, match="Selection.check_fits"):
        from useful_data.selection import check_selection_fits  # noqa: F401
