"""The progress bar of the selection pass: tqdm's where it is installed, else none.

tqdm is optional (``pip install 'useful-data[progress]'``): without it the pass runs the
same, silently, and logs (``logging.INFO``) that the bar needs tqdm.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["tqdm"]

logger = logging.getLogger(__name__)

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - exercised in tests/test_packaging.py

    class tqdm:  # type: ignore[no-redef]  # tqdm's own name, so call sites match
        """A stand-in for ``tqdm.auto.tqdm`` that draws nothing (only the calls the passes
        make: ``update``, ``set_postfix``, ``close`` and use as a context manager)."""

        def __init__(self, *args: Any, disable: bool = False, **kwargs: Any) -> None:
            if not disable:
                logger.info("no progress bar: it needs tqdm (pip install 'useful-data[progress]')")

        def update(self, n: int = 1) -> None:
            """Do nothing (tqdm advances the bar)."""

        def set_postfix(self, *args: Any, **kwargs: Any) -> None:
            """Do nothing (tqdm shows values after the bar)."""

        def close(self) -> None:
            """Do nothing (tqdm closes the bar)."""

        def __enter__(self) -> tqdm:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()
