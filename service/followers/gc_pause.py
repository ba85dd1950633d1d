"""Python's cyclic garbage collector paused for a rebuild.

A rebuild allocates millions of short-lived objects (rows read, events, view rows) that
form no reference cycles: they are all freed by reference counting. The collector still
runs every few hundred allocations, and each older-generation pass walks the whole heap;
in a profile of a rebuild it took about a sixth of the time. Paused, the same rebuild
leaves about a hundred cyclic objects behind (the same number for one rebuild or three),
collected when it ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside the block (unless it was already off); one at its end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect()
