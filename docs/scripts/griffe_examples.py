"""Griffe extension for the docs build: render ``Example:`` docstring sections as examples.

The project's docstrings use Google style with a singular ``Example:`` section (see
STYLE.md). Griffe's Google parser only knows the plural ``Examples:``; it turns the singular
into an admonition whose ``>>>`` lines Markdown then reads as nested block quotes. This
extension renames the section header before parsing, so doctests render as code. It changes
only what the site shows, never the library's docstrings.

Loaded by mkdocstrings through ``extensions:`` in ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` section headers to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\g<indent>Examples:", obj.docstring.value)
