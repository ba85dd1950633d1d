"""The integration node types: ``llm``, ``embedding`` (OpenAI-compatible APIs), ``vector_search``
(FAISS indexes under the service's home) and ``sql`` (PostgreSQL)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import msgspec

from service.engine.nodes.openai_compat import (
    EmbeddingConfig,
    LlmConfig,
    make_embedding_handler,
    make_llm_handler,
)
from service.engine.nodes.registry import NodeRegistry, NodeType
from service.engine.nodes.sql import SqlConfig, sql
from service.engine.nodes.vectors import VectorIndexes, VectorSearchConfig, make_vector_search_handler


def integration_node_types(registry: NodeRegistry, home: Path) -> list[NodeType]:
    """The integration node types; ``llm`` and ``embedding`` use ``registry``'s shared client,
    ``vector_search`` the indexes under ``<home>/vectors``."""
    handlers: list[tuple[str, type[msgspec.Struct], Any]] = [
        ("llm", LlmConfig, make_llm_handler(registry)),
        ("embedding", EmbeddingConfig, make_embedding_handler(registry)),
        ("vector_search", VectorSearchConfig, make_vector_search_handler(VectorIndexes(home))),
        ("sql", SqlConfig, sql),
    ]
    secret_fields = {"llm": {"api_key"}, "embedding": {"api_key"}, "sql": {"connection"}}
    return [
        NodeType(
            name,
            config_type,
            handler,
            (inspect.getdoc(handler) or "").splitlines()[0],
            secret_fields=frozenset(secret_fields.get(name, ())),
        )
        for name, config_type, handler in handlers
    ]


def register_integrations(registry: NodeRegistry, home: Path) -> None:
    for node_type in integration_node_types(registry, home):
        registry.register(node_type)
