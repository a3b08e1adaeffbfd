"""Per-process caches that must be forgotten together (on configure, and when tests switch databases).

Modules register a clear function here instead of the core importing them, so the core stays at the
bottom of the import graph.
"""

from __future__ import annotations

from collections.abc import Callable

_clearers: list[Callable[[], None]] = []


def register(clear: Callable[[], None]) -> Callable[[], None]:
    """Register a function that empties a cache; returns it (usable as a decorator)."""
    if clear not in _clearers:
        _clearers.append(clear)
    return clear


def clear_all() -> None:
    """Empty every registered cache."""
    for clear in list(_clearers):
        clear()
