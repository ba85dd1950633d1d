"""``flowledger vectors build`` / ``list`` and the ``vector_search`` node over real FAISS indexes."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli.main import cli
from service.engine.nodes import InvalidNodeConfig, NodeContext, NodeFailure, NodeRegistry, default_registry
from tests.helpers.paths import FLOWLEDGER

DIM = 32


def vectors(n: int, dim: int = DIM, seed: int = 7) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(n)]


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def cli_run(home: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), "vectors", *args], catch_exceptions=False)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[NodeRegistry]:
    registry = default_registry(home=tmp_path)
    yield registry
    await registry.aclose()


def ctx(tenant: str = "default") -> NodeContext:
    return NodeContext(
        run_id="r", node_id="search", node_type="vector_search", attempt=1, document={}, tenant=tenant
    )


async def search(registry: NodeRegistry, config: dict[str, Any], tenant: str = "default") -> Any:
    return await registry.execute(
        "vector_search", registry.parse_config("vector_search", config), ctx(tenant)
    )


async def test_the_nearest_neighbour_of_a_stored_vector_is_itself(
    tmp_path: Path, registry: NodeRegistry
) -> None:
    stored = vectors(500)
    rows = [{"id": f"doc-{i}", "vector": v, "payload": {"n": i}} for i, v in enumerate(stored)]
    source = write_rows(tmp_path / "docs.ndjson", rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER,
        "--home",
        str(tmp_path),
        "vectors",
        "build",
        "docs",
        str(source),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert "500 vectors of dimension 32" in out.decode()
    assert (tmp_path / "vectors" / "default" / "docs.faiss").is_file()
    assert (tmp_path / "vectors" / "default" / "docs.meta.json").is_file()

    for i in (0, 123, 499):
        output = await search(registry, {"index": "docs", "query": stored[i], "k": 3})
        matches = output["matches"]
        assert len(matches) == 3
        assert matches[0]["id"] == f"doc-{i}" and matches[0]["payload"] == {"n": i}
        assert matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert matches[0]["score"] >= matches[1]["score"] >= matches[2]["score"]
    # cosine: the length of the query does not matter
    scaled = [x * 10 for x in stored[5]]
    assert (await search(registry, {"index": "docs", "query": scaled, "k": 1}))["matches"][0]["id"] == "doc-5"
    # k larger than the index: every vector once
    few = write_rows(tmp_path / "few.ndjson", rows[:3])
    assert cli_run(tmp_path, "build", "few", str(few)).exit_code == 0
    assert len((await search(registry, {"index": "few", "query": stored[0], "k": 10}))["matches"]) == 3


async def test_a_rebuilt_index_is_reloaded(tmp_path: Path, registry: NodeRegistry) -> None:
    [a, b] = vectors(2, seed=1)
    write_rows(tmp_path / "one.ndjson", [{"id": "a", "vector": a, "payload": {"v": 1}}])
    assert cli_run(tmp_path, "build", "idx", str(tmp_path / "one.ndjson")).exit_code == 0
    first = await search(registry, {"index": "idx", "query": b, "k": 5})
    assert [m["id"] for m in first["matches"]] == ["a"]
    write_rows(
        tmp_path / "two.ndjson", [{"id": "a", "vector": a, "payload": {"v": 2}}, {"id": "b", "vector": b}]
    )
    assert cli_run(tmp_path, "build", "idx", str(tmp_path / "two.ndjson")).exit_code == 0
    second = await search(registry, {"index": "idx", "query": b, "k": 5})
    assert [m["id"] for m in second["matches"]] == ["b", "a"]
    assert second["matches"][0]["payload"] == {} and second["matches"][1]["payload"] == {"v": 2}


async def test_indexes_belong_to_a_tenant(tmp_path: Path, registry: NodeRegistry) -> None:
    [v] = vectors(1)
    write_rows(tmp_path / "t.ndjson", [{"id": 1, "vector": v}])
    result = cli_run(tmp_path, "build", "mine", str(tmp_path / "t.ndjson"), "--tenant", "acme")
    assert result.exit_code == 0, result.output
    assert (await search(registry, {"index": "mine", "query": v}, tenant="acme"))["matches"][0]["id"] == 1
    with pytest.raises(NodeFailure) as info:
        await search(registry, {"index": "mine", "query": v}, tenant="default")
    assert info.value.kind == "unknown_index" and not info.value.retryable
    assert "'mine'" in info.value.message and "flowledger vectors build" in info.value.message

    listed = cli_run(tmp_path, "list", "--tenant", "acme", "--format", "json")
    [item] = json.loads(listed.output)
    assert (
        item["name"] == "mine"
        and item["count"] == 1
        and item["dimension"] == DIM
        and item["tenant"] == "acme"
    )
    assert json.loads(cli_run(tmp_path, "list", "--format", "json").output) == []
    every = json.loads(cli_run(tmp_path, "list", "--all-tenants", "--format", "json").output)
    assert [i["tenant"] for i in every] == ["acme"]
    table = cli_run(tmp_path, "list", "--tenant", "acme").output
    assert "mine" in table and "dimension" in table


def test_bad_rows_are_reported_with_their_line_numbers_and_nothing_is_written(tmp_path: Path) -> None:
    [v, w] = vectors(2, dim=4)
    source = write_rows(
        tmp_path / "bad.ndjson",
        [
            {"id": "ok", "vector": v},
            "{not json",
            {"id": "short", "vector": [1.0, 2.0]},
            "",
            {"vector": w},
            {"id": "ok", "vector": w},
            {"id": "zero", "vector": [0, 0, 0, 0]},
            {"id": "text", "vector": ["a", "b", "c", "d"]},
            {"id": "p", "vector": w, "payload": [1]},
            {"id": "fine", "vector": w, "payload": {"x": 1}},
        ],
    )
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "vectors", "build", "bad", str(source)])
    assert result.exit_code == 1
    stderr = result.stderr
    for line in ("line 2: not JSON", "line 3: vector has dimension 2, the index has 4", "line 5: missing id",
                 "line 6: duplicate id 'ok'", "line 7: vector is all zeros", "line 8: vector must be",
                 "line 9: payload must be a JSON object"):  # fmt: skip
        assert line in stderr, stderr
    assert "7 bad row(s); index 'bad' not written" in stderr
    assert not (tmp_path / "vectors" / "default" / "bad.faiss").exists()

    skipped = CliRunner().invoke(
        cli, ["--home", str(tmp_path), "vectors", "build", "bad", str(source), "--skip-bad-rows"]
    )
    assert skipped.exit_code == 0 and "2 vectors of dimension 4, 7 bad row(s) skipped" in skipped.stdout


def test_bad_names_and_tenants_are_refused(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "x.ndjson", [{"id": "a", "vector": [1.0]}])
    assert cli_run(tmp_path, "build", "../escape", str(source)).exit_code == 2
    assert cli_run(tmp_path, "build", "ok", str(source), "--tenant", "a/b").exit_code == 2
    assert not (tmp_path / "vectors").exists()


async def test_query_problems_fail_without_retry(tmp_path: Path, registry: NodeRegistry) -> None:
    write_rows(tmp_path / "q.ndjson", [{"id": "a", "vector": [1.0, 0.0, 0.0]}])
    assert cli_run(tmp_path, "build", "q", str(tmp_path / "q.ndjson")).exit_code == 0
    with pytest.raises(NodeFailure) as info:
        await search(registry, {"index": "q", "query": [1.0, 0.0]})
    assert (
        info.value.kind == "invalid_query"
        and not info.value.retryable
        and "dimension 2" in info.value.message
    )
    with pytest.raises(NodeFailure) as info:
        await search(registry, {"index": "q", "query": [0.0, 0.0, 0.0]})
    assert info.value.kind == "invalid_query"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"index": "../x", "query": [1.0]}, "index name"),
        ({"index": "x", "query": [1.0], "k": 0}, "k"),
        ({"index": "x", "query": "text"}, "query"),
        ({"index": "x", "query": [1.0], "top": 3}, "top"),
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidNodeConfig) as info:
        default_registry().parse_config("vector_search", config)
    assert expected in str(info.value)
