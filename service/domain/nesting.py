"""How deeply a request may nest arrays and objects, checked before anything is decoded.

Decoders recurse (msgspec, PyYAML's composer, every fold and hash over the decoded value),
so an input nested a few thousand levels deep ends in a ``RecursionError``, and deep YAML
costs seconds before it does. These checks refuse it first, in time linear in the input and
without recursion: JSON by scanning its brackets, YAML by counting the depth of its parse
events while the document is built (and stopping at the first level too deep).
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, Final

import yaml

from service.config import DEFAULT_MAX_JSON_DEPTH, ENV_MAX_JSON_DEPTH

DEFAULT_MAX_DEPTH: Final = DEFAULT_MAX_JSON_DEPTH


class TooDeep(ValueError):
    """The input nests more than ``limit`` levels of arrays/objects."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"{what} nests arrays/objects more than {limit} levels deep; at most {limit} levels are "
            f"accepted (the service's {ENV_MAX_JSON_DEPTH} setting)"
        )
        self.limit = limit


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
"""A JSON string (unrolled loop: no backtracking); brackets inside one do not nest anything."""
_OPEN, _CLOSE = b"[{", b"]}"
_DELTAS = bytes.maketrans(_OPEN + _CLOSE, b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _OPEN + _CLOSE)


def json_depth_exceeds(data: bytes | str, limit: int) -> bool:
    """True when the JSON text ``data`` opens more than ``limit`` arrays/objects at once.

    Not a validator: malformed JSON is left to the decoder (an unterminated string counts
    its brackets, which can only make the answer stricter).
    """
    raw = data.encode() if isinstance(data, str) else data
    opened = raw.count(b"[") + raw.count(b"{")
    if opened <= limit:
        return False  # fast path: it cannot open more than it has
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    # +1 per opening, -1 per closing bracket; the running sum is the depth at each point.
    steps = memoryview(brackets.translate(_DELTAS)).cast("b")
    return max(accumulate(steps)) > limit


def check_json_depth(data: bytes | str, limit: int, what: str = "the JSON body") -> None:
    """Raise :class:`TooDeep` when ``data`` nests more than ``limit`` levels."""
    if json_depth_exceeds(data, limit):
        raise TooDeep(what, limit)


class _DepthLimitedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a node deeper than ``max_depth`` as it composes it, so a deep
    document is refused after reading its first ``max_depth`` levels, not after building them all."""

    def __init__(self, stream: str | bytes, max_depth: int, what: str) -> None:
        super().__init__(stream)
        self.max_depth = max_depth
        self.what = what
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Only sequences and mappings nest; a scalar (or an alias) adds no level, as in JSON.
        collection = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if collection:
            self.depth += 1
            if self.depth > self.max_depth:
                raise TooDeep(self.what, self.max_depth)
        try:
            return super().compose_node(parent, index)
        finally:
            if collection:
                self.depth -= 1


def load_yaml(data: str | bytes, limit: int, what: str = "the YAML document") -> Any:
    """``yaml.safe_load`` of one document, refusing (:class:`TooDeep`) more than ``limit`` levels.

    The document root is level 1, as in :func:`json_depth_exceeds`, so the same text nests
    equally deep as JSON or as YAML flow style.
    """
    loader = _DepthLimitedLoader(data, limit, what)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
