"""Callables for ``python`` nodes that make and check big outputs (``tests.helpers.big_outputs:<name>``).

``make`` returns ``inputs.size`` characters of SHA-256 hex (not compressible to nothing, so the
blob really holds that many bytes); ``measure`` reports the length and the SHA-256 of what it got
from ``make`` (``nodes.make``). ``expected`` computes the same without running anything.
"""

from __future__ import annotations

import hashlib
from typing import Any


def big_text(size: int, seed: str = "") -> str:
    """``size`` characters of hex, the same for the same ``size`` and ``seed``."""
    blocks = (size + 63) // 64
    text = "".join(hashlib.sha256(f"{seed}{i}".encode()).hexdigest() for i in range(blocks))
    return text[:size]


def expected(size: int, seed: str = "") -> dict[str, Any]:
    text = big_text(size, seed)
    return {"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def make(document: dict[str, Any]) -> str:
    inputs = document["inputs"]
    return big_text(int(inputs["size"]), str(inputs.get("seed", "")))


def measure(document: dict[str, Any]) -> dict[str, Any]:
    got = document["nodes"]["make"]
    if not isinstance(got, str):
        return {"length": -1, "sha256": "", "type": type(got).__name__}
    return {"length": len(got), "sha256": hashlib.sha256(got.encode()).hexdigest()}
