"""``python`` node callables that log (``print``, ``logging``), for the node log tests.

Like ``bad_nodes``, only worker processes import this module.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger("tests.log_nodes")


def chatty(document: dict[str, Any]) -> str:
    """One line of each kind, in a known order; ``inputs.token`` is printed (a secret, in the tests)."""
    print("printed to stdout")
    print("printed", "to stderr", file=sys.stderr)
    logger.info("logged at %s", "info")
    logger.warning("logged at warning")
    logger.debug("not captured: below INFO")
    if document["inputs"].get("token"):
        print(f"token is {document['inputs']['token']}")
    sys.stdout.write("partial ")
    sys.stdout.write("line\nlast line without newline")
    return "done"


def many(document: dict[str, Any]) -> int:
    """Prints ``inputs.lines`` numbered lines."""
    count = int(document["inputs"].get("lines", 10))
    for i in range(count):
        print(f"line {i}")
    return count


def log_then_fail(document: dict[str, Any]) -> None:
    print("about to fail")
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("lookup failed")
    raise ValueError("failed after logging")


def slow_progress(document: dict[str, Any]) -> int:
    """Logs ``inputs.steps`` lines ``inputs.pause_s`` apart (a long node showing progress)."""
    steps = int(document["inputs"].get("steps", 3))
    for i in range(steps):
        print(f"step {i + 1} of {steps}")
        time.sleep(float(document["inputs"].get("pause_s", 0.7)))
    return steps


def print_then_block(document: dict[str, Any]) -> str:
    """One line, then ``inputs.block_s`` seconds of blocking sleep (no further line to carry it)."""
    print("working on it")
    time.sleep(float(document["inputs"].get("block_s", 2.5)))
    return "done"
