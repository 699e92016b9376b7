""" "Did you mean …?" for a name an editor mistyped: the closest known name, if any is close.

difflib's ratio (matching characters over total length) finds one- or two-letter
typos and swaps in names of a few letters to a few words."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest of `known`, or "" when none is close."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return f" (did you mean {found[0]!r}?)" if found else ""
