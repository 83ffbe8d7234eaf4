"""Closest valid names for a mistyped one: the "did you mean" of every error message about names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "", cutoff: float = 0.5) -> str:
    """``"did you mean a or b? "`` for the up to three choices closest to ``name`` (each shown with ``prefix``),
    or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=cutoff)
    return f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""
