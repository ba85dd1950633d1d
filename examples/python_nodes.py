"""Example callables for the ``python`` node type.

A ``python`` node calls ``callable(document)`` where ``document`` is
``{"inputs": <run inputs>, "nodes": {<upstream id>: <output>, ...}}``; the
return value (JSON-serializable) is the node's output. Use them as
``{type: python, config: {callable: "examples.python_nodes:order_total"}}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("examples.orders")


def order_total(document: dict[str, Any]) -> dict[str, Any]:
    """Sum ``price * quantity`` over ``inputs.items`` (a plain function, called in a python worker process)."""
    items = document["inputs"].get("items", [])
    total = sum(item["price"] * item.get("quantity", 1) for item in items)
    return {"total": round(total, 2), "count": len(items)}


def order_total_logged(document: dict[str, Any]) -> dict[str, Any]:
    """``order_total`` that says what it does: its ``print`` and ``logging`` lines become the node's
    log lines (``flowledger logs RUN``)."""
    items = document["inputs"].get("items", [])
    print(f"pricing {len(items)} items")
    for item in items:
        if item.get("quantity", 1) > 10:
            log.warning("large quantity for %s: %s", item.get("sku", "?"), item["quantity"])
    result = order_total(document)
    log.info("order total %s", result["total"])
    return result


async def greeting(document: dict[str, Any]) -> str:
    """Greet ``inputs.name`` (a coroutine function, awaited on the worker process's event loop)."""
    await asyncio.sleep(0)
    return f"Hello, {document['inputs'].get('name', 'world')}!"


def reject_empty(document: dict[str, Any]) -> dict[str, Any]:
    """Raise ``ValueError`` when the run has no items; the node fails with kind ``ValueError``."""
    items = document["inputs"].get("items")
    if not items:
        raise ValueError("the order has no items")
    return {"accepted": len(items)}
