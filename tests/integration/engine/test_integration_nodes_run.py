"""A real run of the integration nodes through the service (the ``api`` fixture): embed a question
(``embedding``), find the nearest documents in a FAISS index built with ``flowledger vectors
build`` (``vector_search``), answer from them (``llm``), and record the answer (``sql``), with the
API key and the database URL as secrets set by ``flowledger secrets set``. Neither secret is
found in the run's events."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from tests.helpers.api import wait_ended
from tests.helpers.databases import scratch_database
from tests.helpers.openai_server import FakeOpenAI, fake_embedding, fake_openai
from tests.helpers.paths import FLOWLEDGER, REPO_ROOT
from tests.helpers.servers import Servers

DOCS = {
    "tea": "Green tea is brewed at eighty degrees for two minutes.",
    "bike": "Pump bicycle tyres to the pressure written on their sidewall.",
    "bread": "Sourdough bread needs a starter, flour, water and salt.",
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(f"sk-{uuid.uuid4().hex}") as server:
        yield server


@pytest.fixture
async def target(database_url: str) -> AsyncIterator[str]:
    async with scratch_database(database_url, prefix="answers") as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE answers (question text NOT NULL, answer text NOT NULL, source text)"
            )
        finally:
            await conn.close()
        yield url


async def flowledger(servers: Servers, *args: str, stdin: str | None = None) -> str:
    """Run the ``flowledger`` command on the test service's database and home; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(FLOWLEDGER_DATABASE_URL=servers.database_url, FLOWLEDGER_HOME=str(servers.home))
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_embed_search_answer_and_record_in_one_run(
    api: httpx.AsyncClient, servers: Servers, fake: FakeOpenAI, target: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    key_name, db_name, index = f"AI_KEY_{tag.upper()}", f"ANSWERS_DB_{tag.upper()}", f"docs-{tag}"
    await flowledger(servers, "secrets", "set", key_name, stdin=fake.api_key + "\n")
    await flowledger(servers, "secrets", "set", db_name, stdin=target + "\n")
    rows = tmp_path / "docs.ndjson"
    rows.write_text(
        "".join(
            json.dumps({"id": doc_id, "vector": fake_embedding(text), "payload": {"text": text}}) + "\n"
            for doc_id, text in DOCS.items()
        )
    )
    built = await flowledger(servers, "vectors", "build", index, str(rows))
    assert "3 vectors of dimension 27" in built

    wid = f"rag-{tag}"
    spec = {
        "id": wid,
        "nodes": [
            {
                "id": "embed",
                "type": "embedding",
                "config": {
                    "base_url": fake.base_url,
                    "model": "embed-small",
                    "input": {"$expr": "inputs.question"},
                    "api_key": {"$secret": key_name},
                },
            },
            {
                "id": "search",
                "type": "vector_search",
                "config": {"index": index, "query": {"$expr": "nodes.embed.vectors[0]"}, "k": 2},
            },
            {
                "id": "answer",
                "type": "llm",
                "config": {
                    "base_url": fake.base_url,
                    "model": "chat-small",
                    "api_key": {"$secret": key_name},
                    "temperature": 0,
                    "messages": [
                        {"role": "system", "content": "Answer from the context only."},
                        {"role": "user", "content": {"$expr": "nodes.search.matches[0].payload.text"}},
                    ],
                },
                "retry": {"max_attempts": 3, "initial_backoff_ms": 100},
            },
            {
                "id": "record",
                "type": "sql",
                "config": {
                    "connection": {"$secret": db_name},
                    "mode": "execute",
                    "query": "INSERT INTO answers (question, answer, source) VALUES ($1, $2, $3)",
                    "params": [
                        {"$expr": "inputs.question"},
                        {"$expr": "nodes.answer.text"},
                        {"$expr": "nodes.search.matches[0].id"},
                    ],
                },
            },
            {
                "id": "check",
                "type": "sql",
                "config": {
                    "connection": {"$secret": db_name},
                    "query": "SELECT answer, source FROM answers WHERE question = $1",
                    "params": [{"$expr": "inputs.question"}],
                },
            },
        ],
        "edges": [
            {"from": "embed", "to": "search"},
            {"from": "search", "to": "answer"},
            {"from": "answer", "to": "record"},
            {"from": "record", "to": "check"},
        ],
    }
    created = await api.post("/v1/workflows", json=spec)
    assert created.status_code == 201, created.text
    fake.fail_next(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})  # the first call waits
    question = DOCS["tea"]  # the question's text is a stored document: its nearest neighbour
    started = await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"question": question}})
    assert started.status_code in (200, 201, 202), started.text
    run_id = started.json()["run_id"]
    events = await wait_ended(api, run_id, timeout=60)
    assert events[-1]["type"] == "run_finished" and events[-1]["data"]["status"] == "succeeded", events[-1]

    outputs = {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }
    assert outputs["embed"] == {
        "vectors": [fake_embedding(question)],
        "model": "embed-small",
        "usage": {"prompt_tokens": 4},
    }
    matches = outputs["search"]["matches"]
    assert matches[0]["id"] == "tea" and len(matches) == 2
    assert matches[0]["score"] == pytest.approx(1.0, abs=1e-5) and matches[0]["payload"] == {
        "text": DOCS["tea"]
    }
    assert outputs["answer"]["text"] == f"echo: {DOCS['tea']}"
    assert outputs["answer"]["model"] == "chat-small-0001" and outputs["answer"]["finish_reason"] == "stop"
    assert outputs["record"] == {"rowcount": 1}
    assert outputs["check"] == {"rows": [{"answer": f"echo: {DOCS['tea']}", "source": "tea"}]}
    # the 429 was waited for inside the embed node: one attempt, two requests
    attempts = [e for e in events if e["type"] == "node_execute_before" and e["data"]["node_id"] == "embed"]
    assert len(attempts) == 1
    assert [r.path for r in fake.requests] == ["/v1/embeddings", "/v1/embeddings", "/v1/chat/completions"]
    assert all(r.authorization == f"Bearer {fake.api_key}" for r in fake.requests)

    log = json.dumps(events)
    assert fake.api_key not in log and target not in log


async def test_an_unknown_index_fails_the_node_without_retrying(api: httpx.AsyncClient) -> None:
    wid = f"noindex-{uuid.uuid4().hex[:8]}"
    spec = {
        "id": wid,
        "nodes": [
            {
                "id": "search",
                "type": "vector_search",
                "config": {"index": "never-built", "query": [1.0, 2.0]},
                "retry": {"max_attempts": 3},
            }
        ],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    events = await wait_ended(api, run_id)
    failures = [e["data"]["error"] for e in events if e["type"] == "node_execute_after"]
    assert len(failures) == 1
    assert failures[0]["kind"] == "unknown_index" and not failures[0]["retryable"]
    assert "never-built" in failures[0]["message"]


async def test_a_bad_config_is_refused_at_registration(api: httpx.AsyncClient) -> None:
    spec = {
        "id": f"badllm-{uuid.uuid4().hex[:8]}",
        "nodes": [
            {
                "id": "answer",
                "type": "llm",
                "config": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "messages": [], "top_p": 1},
            }
        ],
    }
    response = await api.post("/v1/workflows", json=spec)
    assert response.status_code in (400, 422)
    assert "llm" in response.text and "answer" in response.text


def _doc_examples() -> dict[str, str]:
    """The YAML workflows in the docs' sections on the integration nodes, by workflow id."""
    text = (REPO_ROOT / "docs" / "workflows.md").read_text()
    section = text[text.index("### llm") : text.index("## Error kinds")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return {yaml.safe_load(block)["id"]: block for block in blocks}


async def run_spec(api: httpx.AsyncClient, spec: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Register a YAML spec, run it, and return its node outputs once it succeeded."""
    created = await api.post("/v1/workflows", content=spec, headers={"content-type": "application/yaml"})
    assert created.status_code in (200, 201), created.text
    wid = yaml.safe_load(spec)["id"]
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs})).json()["run_id"]
    events = await wait_ended(api, run_id, timeout=60)
    assert events[-1]["data"]["status"] == "succeeded", [e["data"] for e in events]
    return {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }


async def test_the_docs_examples_run_as_written(
    api: httpx.AsyncClient, servers: Servers, fake: FakeOpenAI, target: str, tmp_path: Path
) -> None:
    """docs/examples/vector_search.yaml as it is; the inline examples with the OpenAI URL pointed
    at the fake server and ORDERS_DB at a database holding their tables."""
    # vector_search.yaml, with the commands of its first lines
    await flowledger(servers, "vectors", "build", "fruit", str(REPO_ROOT / "examples" / "vectors.ndjson"))
    example = (REPO_ROOT / "docs" / "examples" / "vector_search.yaml").read_text()
    outputs = await run_spec(api, example, {"vector": [1, 0.05, 0.1]})
    assert outputs["names"] == ["apple", "cherry"]
    assert [round(m["score"], 3) for m in outputs["nearest"]["matches"]] == [0.993, 0.965]

    examples = {
        wid: block.replace("https://api.openai.com/v1", fake.base_url)
        for wid, block in _doc_examples().items()
    }
    assert set(examples) == {"ask", "vector-search-demo", "ask-docs", "orders-of"}
    await flowledger(servers, "secrets", "set", "OPENAI_API_KEY", stdin=fake.api_key + "\n")
    outputs = await run_spec(api, examples["ask"], {"question": "How long do I brew green tea?"})
    assert outputs["answer"]["text"] == "echo: How long do I brew green tea?"

    rows = tmp_path / "docs.ndjson"
    rows.write_text(
        "".join(
            json.dumps({"id": doc_id, "vector": fake_embedding(text), "payload": {"text": text}}) + "\n"
            for doc_id, text in DOCS.items()
        )
    )
    await flowledger(servers, "vectors", "build", "docs", str(rows))
    outputs = await run_spec(api, examples["ask-docs"], {"question": DOCS["bread"]})
    assert outputs["search"]["matches"][0]["id"] == "bread"
    assert outputs["answer"]["text"].startswith(f"echo: {DOCS['bread']}\n")

    conn = await asyncpg.connect(target)
    try:
        await conn.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, customer text, amount numeric(10, 2), placed date);"
            "INSERT INTO orders (customer, amount, placed) VALUES ('ada', 12.50, '2026-01-01'), ('bob', 1, '2026-01-02');"
            "CREATE TABLE audit (note text NOT NULL)"
        )
    finally:
        await conn.close()
    await flowledger(servers, "secrets", "set", "ORDERS_DB", stdin=target + "\n")
    outputs = await run_spec(api, examples["orders-of"], {"customer": "ada"})
    assert outputs["orders"] == {"rows": [{"id": 1, "amount": "12.50", "placed": "2026-01-01"}]}
    assert outputs["note"] == {"rowcount": 1}
