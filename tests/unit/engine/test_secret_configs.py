"""A config whose only run-time values are ``$secret``s is checked whole when a workflow is
registered: only the secrets' own values wait for the run."""

from __future__ import annotations

from typing import Any

import pytest

from service.engine.nodes import InvalidNodeConfig, default_registry

SECRET = {"$secret": "DB"}
LLM = {"base_url": "http://llm.test", "model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("node_type", "config"),
    [
        ("sql", {"connection": SECRET, "query": "select 1"}),
        ("llm", {**LLM, "api_key": {"$secret": "KEY"}}),
        ("http", {"method": "GET", "url": {"$secret": "HOOK_URL"}}),
        ("http", {"method": "POST", "url": "https://x.test", "headers": {"authorization": {"$secret": "T"}}}),
    ],
)
def test_configs_with_secrets_that_can_be_right_are_accepted(node_type: str, config: dict[str, Any]) -> None:
    assert default_registry().check_config(node_type, config) is None


@pytest.mark.parametrize(
    ("node_type", "config", "says"),
    [
        ("sql", {"connection": SECRET, "query": "select 1", "mode": "bogus"}, "$.mode"),
        ("sql", {"connection": SECRET}, "missing required field `query`"),
        ("llm", {**LLM, "api_key": {"$secret": "KEY"}, "temperature": 3}, "$.temperature"),
        ("http", {"method": "GETX", "url": "https://x.test", "headers": {"a": {"$secret": "T"}}}, "$.method"),
    ],
)
def test_configs_with_secrets_are_refused_for_what_is_wrong_besides_the_secret(
    node_type: str, config: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidNodeConfig) as caught:
        default_registry().check_config(node_type, config)
    assert says in caught.value.problem


def test_a_config_with_an_expression_is_still_left_to_the_run() -> None:
    config = {"connection": SECRET, "query": {"$expr": "inputs.q"}, "mode": "query"}
    assert default_registry().check_config("sql", config) is None
