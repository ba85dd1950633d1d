"""The OpenAPI document the service serves is byte-identical to the committed ``openapi.json``.

A change of it is a change of the API clients see: made on purpose, it comes with a new copy
of the document (see ``REFRESH``); by accident, this test catches it. The app is built but
not started (``ASGITransport`` runs no lifespan), so no database or NATS is needed.

    .venv/bin/python -m tests.unit.api.test_openapi_unchanged   # write the served document
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from service.api.app import create_app
from service.config import Settings

COMMITTED = Path(__file__).with_name("openapi.json")
REFRESH = (
    "If this change to the API is intended, write the served document over the committed copy with\n"
    "    .venv/bin/python -m tests.unit.api.test_openapi_unchanged\n"
    "and commit tests/unit/api/openapi.json together with the change."
)


async def served_openapi() -> bytes:
    """``GET /schema/openapi.json`` of the app, exactly as served."""
    app = create_app(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/")
    return response.content


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two JSON documents differ: one ``<JSON pointer>: <what>`` line per difference."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            at = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in old:
                out.append(f"{at}: added")
            elif key not in new:
                out.append(f"{at}: removed")
            else:
                out += changes(old[key], new[key], at)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            line
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for line in changes(a, b, f"{path}/{i}")
        ]
    if old != new:
        return [f"{path or '/'}: {json.dumps(old)[:80]} -> {json.dumps(new)[:80]}"]
    return []


async def test_the_served_openapi_document_is_the_committed_one() -> None:
    served = await served_openapi()
    committed = COMMITTED.read_bytes()
    if served == committed:
        return
    what = changes(json.loads(committed), json.loads(served)) or [
        "(same JSON, different bytes: key order or spacing)"
    ]
    raise AssertionError(
        f"The OpenAPI document served at /schema/openapi.json differs from {COMMITTED.name}:\n  "
        + "\n  ".join(what[:40])
        + ("\n  ..." if len(what) > 40 else "")
        + f"\n{REFRESH}"
    )


def test_the_change_report_names_what_changed() -> None:
    old = {"paths": {"/a": {"get": {"x": 1}}, "/gone": {}}, "tags": [1, 2]}
    new = {"paths": {"/a": {"get": {"x": 2}}, "/b": {}}, "tags": [1, 2, 3]}
    assert changes(old, new) == [
        "/paths/~1a/get/x: 1 -> 2",
        "/paths/~1b: added",
        "/paths/~1gone: removed",
        "/tags: [1, 2] -> [1, 2, 3]",
    ]
    assert changes(old, old) == []


if __name__ == "__main__":
    COMMITTED.write_bytes(asyncio.run(served_openapi()))
    print(f"wrote {COMMITTED}")
