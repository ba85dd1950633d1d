"""What a client generated from the OpenAPI document can rely on, for every operation: each error
status it can get is declared, as an ``application/problem+json`` body with the ``ProblemDetails``
schema; the credential it needs is declared; and the links between operations resolve."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.unit.api.test_openapi_unchanged import served_openapi

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
PUBLIC = {
    ("get", "/health"),
    ("get", "/ready"),
    ("post", "/v1/session"),
    ("get", "/v1/session"),
    ("delete", "/v1/session"),
}
"""Operations answered without a credential: probes, and signing in and out of the console."""


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(asyncio.run(served_openapi()))
    return loaded


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_error_is_a_declared_problem_document(document: dict[str, Any]) -> None:
    for path, method, op in _operations(document):
        statuses = {int(s) for s in op["responses"]}
        needed = {500} | (set() if (method, path) in PUBLIC else {401, 403, 429, 503})
        if op.get("parameters"):
            needed.add(400)
        if "requestBody" in op:
            needed |= {400, 413, 415}
        assert needed <= statuses, f"{method.upper()} {path} does not declare {sorted(needed - statuses)}"
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"] == PROBLEM, f"{method.upper()} {path} {status}"
                assert response["description"], f"{method.upper()} {path} {status}"


def test_credentials_are_declared(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    for path, method, op in _operations(document):
        if (method, path) in PUBLIC:
            assert op["security"] == [{}], f"{method.upper()} {path} needs no credential"
        else:
            assert "security" not in op, f"{method.upper()} {path} must need the credential"
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
            assert "Retry-After" in op["responses"]["429"]["headers"]


def test_operation_ids_are_the_handler_names_and_links_resolve(document: dict[str, Any]) -> None:
    operations = {op["operationId"]: (path, op) for path, _method, op in _operations(document)}
    assert {"register_workflow", "start_run", "cancel_run", "get_run"} <= set(operations)
    links = [
        (source, link)
        for source, (_path, op) in operations.items()
        for response in op["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert links
    for source, link in links:
        _path, target = operations[link["operationId"]]
        names = {p["name"] for p in target.get("parameters", [])}
        assert set(link.get("parameters", {})) <= names, f"{source} -> {link['operationId']}"
    chain = {(s, link["operationId"]) for s, link in links}
    assert {("register_workflow", "start_run"), ("start_run", "cancel_run")} <= chain


def test_bodies_are_described_as_read(document: dict[str, Any]) -> None:
    register = document["paths"]["/v1/workflows"]["post"]["requestBody"]
    assert register["required"] is True
    assert set(register["content"]) == {"application/json", "application/yaml"}
    start = document["paths"]["/v1/workflows/{workflow_id}/runs"]["post"]["requestBody"]
    assert start["required"] is False  # no body: no inputs
    strict = document["components"]["schemas"]
    for name in ("StartRun", "CancelRun", "ReplayRun", "WorkflowSpec", "NodeSpec", "EdgeSpec"):
        assert strict[name]["additionalProperties"] is False, name
