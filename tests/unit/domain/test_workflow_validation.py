"""Workflow spec parsing, validation, versioning and the graph view (pure, no I/O but example files).

A small fake ``ConfigChecker`` stands in for the node registry, so these tests
pin the validator's own rules and messages, not any handler's.
"""

from __future__ import annotations

import itertools
import json
import pickle
import random
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jmespath
import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas.workflow import EdgeSpec, NodeSpec, RetryPolicy, WorkflowSpec, spec_version
from service.domain.workflow_spec import (
    InvalidWorkflow,
    SpecProblem,
    build_graph,
    check_spec,
    load_spec_file,
    parse_spec,
    validate_spec,
)
from service.engine.nodes import default_registry
from tests.helpers.paths import EXAMPLES, REPO_ROOT

# --------------------------------------------------------------------------- fake checker


class UnknownType(LookupError):
    pass


class BadConfig(ValueError):
    pass


def _only(config: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(config) - allowed)
    if extra:
        raise BadConfig(f"unknown config key '{extra[0]}' (allowed: {', '.join(sorted(allowed)) or 'none'})")


def _expression(config: dict[str, Any]) -> None:
    _only(config, {"expression"})
    expr = config.get("expression")
    if not isinstance(expr, str):
        raise BadConfig("expression is required and must be a string")
    try:
        jmespath.compile(expr)
    except jmespath.exceptions.ParseError as exc:
        raise BadConfig(f"expression does not parse: {exc}") from None


def _delay(config: dict[str, Any]) -> None:
    _only(config, {"ms"})
    ms = config.get("ms")
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise BadConfig(f"ms must be an integer >= 0, got {ms!r}")


def _http(config: dict[str, Any]) -> None:
    _only(config, {"method", "url", "headers", "json", "timeout_ms"})
    if config.get("method") not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise BadConfig(f"method must be an HTTP method, got {config.get('method')!r}")
    url = config.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise BadConfig(f"url must be an http(s) URL, got {url!r}")
    timeout = config.get("timeout_ms", 1)
    if not isinstance(timeout, int) or timeout <= 0:
        raise BadConfig(f"timeout_ms must be a positive integer, got {timeout!r}")


def _python(config: dict[str, Any]) -> None:
    _only(config, {"callable"})
    target = config.get("callable")
    if not isinstance(target, str) or ":" not in target:
        raise BadConfig(f"callable must look like 'pkg.mod:func', got {target!r}")


def _fail(config: dict[str, Any]) -> None:
    _only(config, {"message", "times"})
    times = config.get("times", 0)
    if not isinstance(times, int) or times < 0:
        raise BadConfig(f"times must be an integer >= 0, got {times!r}")


class FakeChecker:
    """Knows the built-in type names with simple config rules."""

    rules: dict[str, Callable[[dict[str, Any]], None]] = {
        "noop": lambda c: _only(c, set()),
        "transform": _expression,
        "branch": _expression,
        "delay": _delay,
        "http": _http,
        "python": _python,
        "fail": _fail,
    }

    def names(self) -> list[str]:
        return list(self.rules)

    def check_config(self, name: str, config: dict[str, Any]) -> object:
        try:
            rule = self.rules[name]
        except KeyError:
            raise UnknownType(name) from None
        rule(config)
        return config


CHECKER = FakeChecker()
VALID_CONFIG: dict[str, dict[str, Any]] = {
    "noop": {},
    "transform": {"expression": "{seen: keys(nodes)}"},
    "branch": {"expression": "inputs.flag"},
    "delay": {"ms": 5},
    "http": {"method": "GET", "url": "http://127.0.0.1:8000/health"},
    "python": {"callable": "pkg.mod:func"},
    "fail": {"times": 1},
}


def node(node_id: str, type_: str = "noop", **kw: Any) -> NodeSpec:
    return NodeSpec(id=node_id, type=type_, config=kw.pop("config", VALID_CONFIG[type_]), **kw)


def edge(a: str, b: str, when: str | None = None) -> EdgeSpec:
    return EdgeSpec(from_=a, to=b, when=when)


def spec(nodes: list[NodeSpec], edges: Sequence[EdgeSpec] = (), **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(id=kw.pop("id", "wf"), nodes=nodes, edges=list(edges), **kw)


def problems_of_with(s: WorkflowSpec, checker: FakeChecker) -> list[tuple[str, str]]:
    return [(p.code, p.message) for p in validate_spec(s, checker)]


def problems_of(s: WorkflowSpec) -> list[tuple[str, str]]:
    return problems_of_with(s, CHECKER)


# --------------------------------------------------------------------------- each rule, exact messages


def test_valid_spec_has_no_problems_and_check_returns_it() -> None:
    s = spec(
        [node("fetch", "http"), node("check", "branch"), node("notify", "transform")],
        [edge("fetch", "check"), edge("check", "notify", "true")],
    )
    assert validate_spec(s, CHECKER) == []
    assert check_spec(s, CHECKER) is s


def test_empty_node_list() -> None:
    assert problems_of(spec([])) == [("no_entry_node", "a workflow needs at least one node")]


def test_duplicate_node_id() -> None:
    s = spec([node("a"), node("b"), node("a", "delay", config={"ms": -1})], [edge("a", "b")])
    assert validate_spec(s, CHECKER) == [
        SpecProblem(
            "duplicate_node",
            "node id 'a' is used by 2 nodes (nodes[0], nodes[2]); node ids must be unique",
            "a",
        ),
        # a problem of one of the duplicates names which one it is
        SpecProblem(
            "bad_node_config",
            "node 'a' (nodes[2]): invalid config for type 'delay': ms must be an integer >= 0, got -1",
            "a",
        ),
    ]


def test_edge_to_unknown_node_names_the_known_ones() -> None:
    s = spec(
        [node("fetch", "http"), node("check", "branch"), node("notify", "transform")],
        [edge("fetch", "chekc")],
    )
    assert validate_spec(s, CHECKER) == [
        SpecProblem(
            "unknown_edge_node",
            "edge fetch -> chekc: node 'chekc' does not exist (known nodes: check, fetch, notify)",
            node_id="chekc",
            edge=("fetch", "chekc"),
        )
    ]


def test_edge_with_both_ends_unknown_reports_both() -> None:
    s = spec([node("a")], [edge("x", "y"), edge("x", "x")])
    assert problems_of(s) == [
        ("unknown_edge_node", "edge x -> y: node 'x' does not exist (known nodes: a)"),
        ("unknown_edge_node", "edge x -> y: node 'y' does not exist (known nodes: a)"),
        ("unknown_edge_node", "edge x -> x: node 'x' does not exist (known nodes: a)"),
    ]


def test_edges_without_any_nodes() -> None:
    assert problems_of(spec([], [edge("a", "b")]))[1:] == [
        ("unknown_edge_node", "edge a -> b: node 'a' does not exist (the workflow has no nodes)"),
        ("unknown_edge_node", "edge a -> b: node 'b' does not exist (the workflow has no nodes)"),
    ]


def test_cycle_is_named_in_order_from_its_smallest_node() -> None:
    s = spec(
        [node("start"), node("c"), node("b"), node("a")],
        [edge("start", "b"), edge("b", "c"), edge("c", "a"), edge("a", "b")],
    )
    assert validate_spec(s, CHECKER) == [SpecProblem("cycle", "cycle: a -> b -> c -> a", node_id="a")]


def test_each_distinct_cycle_once_sorted() -> None:
    # a -> b -> a and a -> c -> b -> a; b -> a is listed twice with different labels
    s = spec(
        [node("s"), node("a", "branch"), node("b", "branch"), node("c")],
        [
            edge("s", "a"),
            edge("a", "b"),
            edge("b", "a", "true"),
            edge("b", "a", "false"),
            edge("a", "c"),
            edge("c", "b"),
        ],
    )
    assert problems_of(s) == [("cycle", "cycle: a -> b -> a"), ("cycle", "cycle: a -> c -> b -> a")]


def test_self_loop_is_a_cycle() -> None:
    s = spec([node("s"), node("loop")], [edge("s", "loop"), edge("loop", "loop")])
    assert problems_of(s) == [("cycle", "cycle: loop -> loop")]


def test_no_entry_node_when_every_node_has_an_incoming_edge() -> None:
    s = spec([node("a"), node("b")], [edge("a", "b"), edge("b", "a")])
    assert problems_of(s) == [
        ("no_entry_node", "no entry node: every node has an incoming edge, so a run has nowhere to start"),
        ("cycle", "cycle: a -> b -> a"),
    ]


def test_detached_cycle_is_not_also_reported_as_unreachable() -> None:
    s = spec(
        [node("s"), node("a"), node("b"), node("after")], [edge("a", "b"), edge("b", "a"), edge("b", "after")]
    )
    assert [p.code for p in validate_spec(s, CHECKER)] == ["cycle"]


def test_unknown_node_type_lists_known_types() -> None:
    s = spec([node("x", "noop"), NodeSpec(id="y", type="htp"), NodeSpec(id="z", type="sql")])
    assert validate_spec(s, CHECKER) == [
        SpecProblem(
            "unknown_node_type",
            "node 'y': unknown node type 'htp' (known types: branch, delay, fail, http, noop, python, "
            "transform); did you mean 'http'?",
            "y",
        ),
        SpecProblem(
            "unknown_node_type",
            "node 'z': unknown node type 'sql' (known types: branch, delay, fail, http, noop, python, transform)",
            "z",
        ),
    ]


def test_checker_lookup_error_is_an_unknown_type() -> None:
    class Forgetful(FakeChecker):
        def check_config(self, name: str, config: dict[str, Any]) -> object:
            raise UnknownType(name)

    [problem] = validate_spec(spec([node("x")]), Forgetful())
    assert problem.code == "unknown_node_type"


def test_bad_node_config_carries_the_checkers_message() -> None:
    s = spec(
        [
            node("wait", "delay", config={"ms": "soon"}),
            node("call", "python", config={"callable": "nocolon"}),
            node("calc", "transform", config={"expression": "{a: "}),
        ]
    )
    got = problems_of(s)
    assert got[:2] == [
        (
            "bad_node_config",
            "node 'wait': invalid config for type 'delay': ms must be an integer >= 0, got 'soon'",
        ),
        (
            "bad_node_config",
            "node 'call': invalid config for type 'python': callable must look like 'pkg.mod:func', got 'nocolon'",
        ),
    ]
    assert got[2][0] == "bad_node_config"
    assert got[2][1].startswith(
        "node 'calc': invalid config for type 'transform': expression does not parse:"
    )
    assert "\n" not in got[2][1]  # multi-line checker messages are folded onto one line


def test_bad_node_config_does_not_repeat_the_checkers_own_prefix() -> None:
    class Prefixing(FakeChecker):
        def check_config(self, name: str, config: dict[str, Any]) -> object:
            raise BadConfig(f"invalid config for node type '{name}': Expected `int` >= 0 - at `$.ms`")

    assert problems_of_with(spec([node("wait", "delay")]), Prefixing()) == [
        (
            "bad_node_config",
            "node 'wait': invalid config for node type 'delay': Expected `int` >= 0 - at `$.ms`",
        )
    ]


@pytest.mark.parametrize(
    ("retry", "timeout_ms", "messages"),
    [
        (RetryPolicy(max_attempts=0), None, ["retry.max_attempts must be at least 1 (got 0)"]),
        (
            RetryPolicy(initial_backoff_ms=-1),
            None,
            ["retry.initial_backoff_ms must not be negative (got -1)"],
        ),
        (RetryPolicy(multiplier=0.5), None, ["retry.multiplier must be at least 1 (got 0.5)"]),
        (RetryPolicy(multiplier=float("nan")), None, ["retry.multiplier must be at least 1 (got nan)"]),
        (
            RetryPolicy(initial_backoff_ms=100, max_backoff_ms=10),
            None,
            ["retry.max_backoff_ms must be at least retry.initial_backoff_ms (got 10 < 100)"],
        ),
        (None, 0, ["timeout_ms must be greater than 0 (got 0)"]),
        (
            RetryPolicy(max_attempts=0, multiplier=0.0),
            -5,
            [
                "retry.max_attempts must be at least 1 (got 0)",
                "retry.multiplier must be at least 1 (got 0.0)",
                "timeout_ms must be greater than 0 (got -5)",
            ],
        ),
    ],
)
def test_bad_retry(retry: RetryPolicy | None, timeout_ms: int | None, messages: list[str]) -> None:
    s = spec([node("flaky", "fail", retry=retry, timeout_ms=timeout_ms)])
    assert problems_of(s) == [("bad_retry", f"node 'flaky': {m}") for m in messages]


def test_sane_retry_edges_are_accepted() -> None:
    retry = RetryPolicy(max_attempts=1, initial_backoff_ms=0, multiplier=1.0, max_backoff_ms=0)
    assert validate_spec(spec([node("n", retry=retry, timeout_ms=1)]), CHECKER) == []


def test_duplicate_edge() -> None:
    s = spec(
        [node("a", "branch"), node("b")],
        [
            edge("a", "b"),
            edge("a", "b", "true"),
            edge("a", "b"),
            edge("a", "b", "true"),
            edge("a", "b", "false"),
        ],
    )
    assert validate_spec(s, CHECKER) == [
        SpecProblem("duplicate_edge", "edge a -> b is listed 2 times; keep one", edge=("a", "b")),
        SpecProblem(
            "duplicate_edge", 'edge a -> b (when "true") is listed 2 times; keep one', edge=("a", "b")
        ),
    ]


def test_when_on_an_edge_from_a_non_branch_node() -> None:
    s = spec([node("fetch", "http"), node("next")], [edge("fetch", "next", "true")])
    assert validate_spec(s, CHECKER) == [
        SpecProblem(
            "bad_branch_label",
            "edge fetch -> next: when \"true\" needs a branch node as its source, but 'fetch' is a 'http' "
            "node; remove `when` or route the edge through a branch node",
            node_id="fetch",
            edge=("fetch", "next"),
        )
    ]


def test_branch_label_must_be_true_or_false() -> None:
    s = spec(
        [node("check", "branch"), node("ok"), node("no")],
        [edge("check", "ok", "yes"), edge("check", "no", "false")],
    )
    assert problems_of(s) == [
        (
            "bad_branch_label",
            'edge check -> ok: when must be "true" or "false" (the labels a branch node produces), got "yes"',
        )
    ]


def test_when_from_a_node_of_unknown_type_is_not_reported_twice() -> None:
    s = spec([NodeSpec(id="check", type="brnch"), node("ok")], [edge("check", "ok", "true")])
    assert [p.code for p in validate_spec(s, CHECKER)] == ["unknown_node_type"]


def test_all_problems_in_a_deterministic_order() -> None:
    s = spec(
        [
            node("b", "branch"),
            node("a", "delay", config={}),
            node("b"),
            NodeSpec(id="c", type="nope", retry=RetryPolicy(max_attempts=0)),
        ],
        [edge("a", "ghost"), edge("a", "b", "true"), edge("b", "a"), edge("a", "b", "true")],
    )
    codes = [p.code for p in validate_spec(s, CHECKER)]
    assert codes == [
        "duplicate_node",
        "bad_node_config",
        "unknown_node_type",
        "bad_retry",
        "unknown_edge_node",
        "duplicate_edge",
        "bad_branch_label",  # once, although the edge is listed twice
        "cycle",
    ]
    assert validate_spec(s, CHECKER) == validate_spec(s, CHECKER)


def test_invalid_workflow_lists_every_problem_one_per_line() -> None:
    s = spec([node("a"), node("a"), node("b", "delay", config={"ms": -1})], [edge("a", "zz")])
    with pytest.raises(InvalidWorkflow) as info:
        check_spec(s, CHECKER)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert [p.code for p in exc.problems] == ["duplicate_node", "bad_node_config", "unknown_edge_node"]
    assert str(exc).splitlines() == [p.message for p in exc.problems]
    again = pickle.loads(pickle.dumps(exc))
    assert again.problems == exc.problems and str(again) == str(exc)


# --------------------------------------------------------------------------- parsing


GOOD_YAML = """
id: order-pipeline
nodes:
  - id: fetch
    type: http
    config: {method: GET, url: "http://127.0.0.1:8000/health", timeout_ms: 2000}
    retry: {max_attempts: 3, initial_backoff_ms: 100, multiplier: 2, max_backoff_ms: 5000}
  - {id: check, type: branch, config: {expression: "nodes.fetch.status_code == `200`"}}
edges:
  - {from: fetch, to: check}
"""


def test_yaml_and_json_parse_to_the_same_spec() -> None:
    from_yaml = parse_spec(GOOD_YAML)
    from_json = parse_spec(json.dumps(yaml.safe_load(GOOD_YAML)))
    assert from_yaml == from_json
    assert from_yaml.nodes[0].retry == RetryPolicy(3, 100, 2.0, 5000)
    assert from_yaml.edges == [edge("fetch", "check")]
    assert parse_spec(("  \n" + json.dumps(yaml.safe_load(GOOD_YAML))).encode(), format="auto") == from_yaml
    assert parse_spec(GOOD_YAML.encode(), format="yaml") == from_yaml


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (
            '{"id": "wf", "nodes": [{"id": 1, "type": "noop"}]}',
            "auto",
            "invalid workflow spec: Expected `str`, got `int` - at `$.nodes[0].id`",
        ),
        (
            "id: wf\nnodes:\n  - {id: 1, type: noop}\n",
            "auto",
            "invalid workflow spec: Expected `str`, got `int` - at `$.nodes[0].id` "
            "(quote the value in YAML to make it a string)",
        ),
        (
            "id: wf\nnodes: [{id: a, type: branch}, {id: b, type: noop}]\nedges: [{from: a, to: b, when: true}]\n",
            "yaml",
            "invalid workflow spec: Expected `str | null`, got `bool` - at `$.edges[0].when` "
            '(write when: "true" in quotes; unquoted true is a YAML boolean)',
        ),
        (
            '{"id": "my workflow", "nodes": []}',
            "json",
            "invalid workflow spec: Expected `str` matching regex '^[A-Za-z0-9_-]{1,64}$' - at `$.id`",
        ),
        (
            "id: wf\nnodes: [{id: a, type: noop, colour: red}]\n",
            "yaml",
            "invalid workflow spec: Object contains unknown field `colour` - at `$.nodes[0]`",
        ),
        ("id: wf\n", "yaml", "invalid workflow spec: Object missing required field `nodes`"),
        ("- just\n- a list\n", "yaml", "invalid workflow spec: Expected `object`, got `array`"),
        ("", "auto", "the workflow spec is empty"),
        ('{"id": "wf", "nodes": [', "auto", "JSON is malformed: Input data was truncated"),
        (
            "id: wf\nnodes: [{id: a, type: noop}\nedges: []\n",
            "yaml",
            "YAML is malformed at line 3, column 1: expected ',' or ']', but got '<scalar>' "
            "(while parsing a flow sequence at line 2, column 8)",
        ),
    ],
)
def test_parse_errors_name_the_path(data: str, fmt: Any, message: str) -> None:
    with pytest.raises(InvalidWorkflow) as info:
        parse_spec(data, format=fmt)
    assert info.value.problems == [SpecProblem("parse_error", message)]
    assert str(info.value) == message


def test_load_spec_file_by_suffix_and_errors(tmp_path: Path) -> None:
    as_json = tmp_path / "wf.json"
    as_json.write_text(json.dumps(yaml.safe_load(GOOD_YAML)))
    as_yml = tmp_path / "wf.yml"
    as_yml.write_text(GOOD_YAML)
    assert load_spec_file(as_json) == load_spec_file(as_yml) == parse_spec(GOOD_YAML)

    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=r"workflow file .*nope\.yaml does not exist"):
        load_spec_file(missing)

    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "wf"}')
    with pytest.raises(InvalidWorkflow) as info:
        load_spec_file(broken)
    assert str(info.value) == f"{broken}: invalid workflow spec: Object missing required field `nodes`"
    # a .json suffix means JSON: YAML in it is reported as malformed JSON
    yaml_in_json = tmp_path / "oops.json"
    yaml_in_json.write_text(GOOD_YAML)
    with pytest.raises(InvalidWorkflow, match="JSON is malformed"):
        load_spec_file(yaml_in_json)


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("name", "workflow_id"),
    [
        ("fan_out_fan_in.yaml", "fan-out-fan-in"),
        ("retries.yaml", "retries"),
        ("http_health.yaml", "http-health"),
    ],
)
def test_examples_parse_and_validate(name: str, workflow_id: str) -> None:
    path = EXAMPLES / name
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#")
    assert f"flowledger workflows add examples/{name}" in first_line
    assert f"flowledger run {workflow_id} --follow" in first_line
    s = load_spec_file(path)
    assert s.id == workflow_id
    assert validate_spec(s, default_registry()) == []  # the real node types, not the fake checker
    graph = build_graph(s)
    assert len(graph.entry_nodes) == 1


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "docs" / "examples").glob("*.*")), ids=lambda p: p.name)
def test_every_example_in_the_docs_validates(path: Path) -> None:
    assert validate_spec(load_spec_file(path), default_registry()) == []


def test_fan_out_example_shape_and_join_tolerates_the_skipped_branch() -> None:
    s = load_spec_file(EXAMPLES / "fan_out_fan_in.yaml")
    graph = build_graph(s)
    start = graph.entry_nodes[0]
    fan_out = [e.to for e in graph.downstream[start]]
    assert len(fan_out) == 3 and all(graph.nodes[n].type == "transform" for n in fan_out)
    [branch] = [n for n, spec_ in graph.nodes.items() if spec_.type == "branch"]
    labelled = {e.when: e.to for e in graph.downstream[branch]}
    assert set(labelled) == {"true", "false"}
    assert all(len(graph.upstream[n]) == 1 for n in labelled.values())  # reached only via their label
    join = graph.topo_order[-1]
    assert {labelled["true"], labelled["false"], *fan_out} <= {e.from_ for e in graph.upstream[join]}

    def run(inputs: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the example the way the engine would: each node sees its upstream outputs."""
        outputs: dict[str, Any] = {}
        for n in graph.topo_order:
            taken = [
                e
                for e in graph.upstream[n]
                if e.from_ in outputs and (e.when is None or outputs[e.from_] == e.when)
            ]
            if graph.upstream[n] and not taken:
                continue  # skipped
            doc = {"inputs": inputs, "nodes": {e.from_: outputs[e.from_] for e in taken}}
            value = jmespath.search(graph.nodes[n].config.get("expression", "`{}`"), doc)
            outputs[n] = ("true" if value else "false") if graph.nodes[n].type == "branch" else value
        return outputs

    small = run({})
    assert labelled["true"] not in small
    big = run({"order": {"id": "o-1", "items": [{"sku": "A", "quantity": 12}]}})
    assert labelled["false"] not in big
    assert small[join]["tier"] != big[join]["tier"]
    assert None not in (small[join]["tier"], big[join]["tier"])


# --------------------------------------------------------------------------- graph view


def test_build_graph_basic_view() -> None:
    s = spec(
        [node("d"), node("b"), node("a"), node("c")],
        [edge("a", "c"), edge("b", "c"), edge("c", "d")],
    )
    g = build_graph(s)
    assert g.entry_nodes == ("b", "a")
    assert g.topo_order == ("b", "a", "c", "d")
    assert g.upstream["c"] == (edge("a", "c"), edge("b", "c"))
    assert g.downstream["c"] == (edge("c", "d"),)
    assert g.upstream["a"] == () and g.downstream["d"] == ()
    assert g.ancestors == {"a": frozenset(), "b": frozenset(), "c": {"a", "b"}, "d": {"a", "b", "c"}}
    with pytest.raises(TypeError):
        g.upstream["x"] = ()  # type: ignore[index]


@pytest.mark.parametrize(
    ("s", "code"),
    [
        (spec([node("a"), node("b")], [edge("a", "b"), edge("b", "a")]), "cycle"),
        (spec([node("a")], [edge("a", "zz")]), "unknown_edge_node"),
        (spec([node("a"), node("a")]), "duplicate_node"),
    ],
)
def test_build_graph_refuses_structurally_invalid_specs(s: WorkflowSpec, code: str) -> None:
    with pytest.raises(InvalidWorkflow) as info:
        build_graph(s)
    assert {p.code for p in info.value.problems} == {code}


def test_many_cycles_are_capped() -> None:
    # a complete digraph on 8 nodes has thousands of elementary cycles
    ids = [f"n{i}" for i in range(8)]
    s = spec(
        [node(i) for i in ["s", *ids]], [edge("s", "n0")] + [edge(a, b) for a in ids for b in ids if a != b]
    )
    got = validate_spec(s, CHECKER)
    assert [p.code for p in got] == ["cycle"] * 26
    assert got[-1].message == (
        "more than 25 cycles; the others run through nodes n0, n1, n2, n3, n4, n5, n6, n7 (a workflow must be acyclic)"
    )


# --------------------------------------------------------------------------- properties

ids = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)
NON_BRANCH = ["noop", "transform", "delay", "http", "python", "fail"]


@st.composite
def dags(draw: st.DrawFn) -> WorkflowSpec:
    """A valid DAG: edges only from lower to higher index; every node an entry or fed by an earlier one."""
    count = draw(st.integers(1, 12))
    names = draw(st.lists(ids, min_size=count, max_size=count, unique=True))
    types = [draw(st.sampled_from([*NON_BRANCH, "branch"])) for _ in names]
    edges: list[EdgeSpec] = []
    for j in range(1, count):
        parents = draw(st.sets(st.integers(0, j - 1), max_size=3))
        for i in sorted(parents):
            when = draw(st.sampled_from([None, "true", "false"])) if types[i] == "branch" else None
            edges.append(edge(names[i], names[j], when))
    draw(st.randoms(use_true_random=False)).shuffle(edges)
    retry = st.none() | st.builds(
        RetryPolicy,
        max_attempts=st.integers(1, 5),
        initial_backoff_ms=st.integers(0, 100),
        multiplier=st.floats(1, 4),
        max_backoff_ms=st.integers(100, 1000),
    )
    nodes = [
        NodeSpec(
            id=n,
            type=t,
            config=VALID_CONFIG[t],
            retry=draw(retry),
            timeout_ms=draw(st.none() | st.integers(1)),
        )
        for n, t in zip(names, types, strict=True)
    ]
    return WorkflowSpec(
        id=draw(ids),
        nodes=nodes,
        edges=edges,
        name=draw(st.none() | st.text(max_size=10)),
        on_failure=draw(st.sampled_from(["stop", "continue"])),
    )


def _reachable(s: WorkflowSpec, start: str) -> set[str]:
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        n = frontier.pop()
        for e in s.edges:
            if e.from_ == n and e.to not in seen:
                seen.add(e.to)
                frontier.append(e.to)
    return seen


FAST = settings(
    max_examples=80, suppress_health_check=[HealthCheck.too_slow]
)  # big DAGs take a while to draw


@FAST
@given(dags())
def test_random_dags_are_valid_and_graph_is_consistent(s: WorkflowSpec) -> None:
    assert validate_spec(s, CHECKER) == []
    g = build_graph(s)
    ids_ = [n.id for n in s.nodes]
    assert sorted(g.topo_order) == sorted(ids_)
    pos = {n: i for i, n in enumerate(g.topo_order)}
    for e in s.edges:
        assert pos[e.from_] < pos[e.to]
    for n in ids_:
        assert set(g.upstream[n]) == {e for e in s.edges if e.to == n}
        assert set(g.downstream[n]) == {e for e in s.edges if e.from_ == n}
        assert g.ancestors[n] == {m for m in ids_ if n in _reachable(s, m)}
    assert g.entry_nodes == tuple(n for n in ids_ if not g.upstream[n])
    # the spec order is itself topological here, and topo_order is stable w.r.t. it
    assert g.topo_order == tuple(ids_)


@FAST
@given(dags(), st.randoms(use_true_random=False))
def test_topo_order_is_stable_under_spec_reordering(s: WorkflowSpec, rnd: random.Random) -> None:
    nodes = list(s.nodes)
    rnd.shuffle(nodes)
    shuffled = msgspec.structs.replace(s, nodes=nodes)
    g = build_graph(shuffled)
    pos = {n: i for i, n in enumerate(g.topo_order)}
    assert all(pos[e.from_] < pos[e.to] for e in s.edges)
    # greedy: each step takes the earliest-in-spec node whose parents are all done
    done: set[str] = set()
    for n in g.topo_order:
        ready = [m.id for m in nodes if m.id not in done and g.ancestors[m.id] <= done]
        assert n == ready[0]
        done.add(n)


@FAST
@given(dags(), st.data())
def test_a_back_edge_is_reported_as_a_cycle(s: WorkflowSpec, data: st.DataObject) -> None:
    g = build_graph(s)
    v = data.draw(st.sampled_from([n.id for n in s.nodes]))
    u = data.draw(st.sampled_from(sorted(g.ancestors[v] | {v})))
    mutated = msgspec.structs.replace(s, edges=[*s.edges, edge(v, u)])
    got = validate_spec(mutated, CHECKER)
    cycles = [p for p in got if p.code == "cycle"]
    assert cycles
    edge_set = {(e.from_, e.to) for e in mutated.edges}
    for p in cycles:
        path = p.message.removeprefix("cycle: ").split(" -> ")
        assert path[0] == path[-1] == min(path)
        assert all((a, b) in edge_set for a, b in itertools.pairwise(path))
        assert (v, u) in itertools.pairwise(path)  # every cycle goes through the new edge
    has_entry = any(all(e.to != n.id for e in mutated.edges) for n in mutated.nodes)
    expected = {"cycle"} if has_entry else {"cycle", "no_entry_node"}
    assert {p.code for p in got} == expected
    if u == v:
        assert f"cycle: {v} -> {v}" in [p.message for p in cycles]


@FAST
@given(dags(), st.data())
def test_single_defects_are_reported_with_their_code(s: WorkflowSpec, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["duplicate_node", "unknown_edge_node", "unknown_node_type"]))
    ids_ = [n.id for n in s.nodes]
    target = data.draw(st.sampled_from(ids_))
    if kind == "duplicate_node":
        mutated = msgspec.structs.replace(s, nodes=[*s.nodes, node(target)])
    elif kind == "unknown_edge_node":
        missing = data.draw(ids.filter(lambda x: x not in ids_))
        new = edge(target, missing) if data.draw(st.booleans()) else edge(missing, target)
        mutated = msgspec.structs.replace(s, edges=[*s.edges, new])
    else:
        bad = data.draw(ids.filter(lambda x: x not in FakeChecker.rules))
        nodes = [msgspec.structs.replace(n, type=bad, config={}) if n.id == target else n for n in s.nodes]
        mutated = msgspec.structs.replace(s, nodes=nodes)
    got = validate_spec(mutated, CHECKER)
    assert [p.code for p in got] == [kind]
    if kind == "unknown_edge_node":
        assert got[0].node_id == missing
        assert got[0].message.startswith(f"edge {new.from_} -> {new.to}: node '{missing}' does not exist")
    else:
        assert got[0].node_id == target


def _shuffle_keys(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffle_keys(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffle_keys(v, rnd) for v in value]
    return value


@FAST
@given(dags(), st.randoms(use_true_random=False))
def test_spec_version_is_stable_across_formats_and_key_order(s: WorkflowSpec, rnd: random.Random) -> None:
    version = spec_version(s)
    assert len(version) == 16 and int(version, 16) >= 0
    doc = msgspec.to_builtins(s)
    as_json = json.dumps(_shuffle_keys(doc, rnd))
    as_yaml = yaml.safe_dump(_shuffle_keys(doc, rnd), sort_keys=False)
    assert spec_version(parse_spec(as_json)) == version
    assert spec_version(parse_spec(as_yaml, format="yaml")) == version
    # omitted defaults are the same content as written-out defaults
    assert spec_version(parse_spec(json.dumps(_without_defaults(doc)))) == version


def _without_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        "name": None,
        "on_failure": "stop",
        "edges": [],
        "retry": None,
        "timeout_ms": None,
        "config": {},
    }
    out = {k: v for k, v in doc.items() if k in ("id", "nodes") or defaults.get(k, object()) != v}
    out["nodes"] = [{k: v for k, v in n.items() if defaults.get(k, object()) != v} for n in doc["nodes"]]
    if "edges" in out:
        out["edges"] = [{k: v for k, v in e.items() if v is not None} for e in doc["edges"]]
    return out


MUTATIONS: dict[str, Callable[[WorkflowSpec, str], WorkflowSpec]] = {
    "id": lambda s, t: msgspec.structs.replace(s, id=s.id + "x"),
    "name": lambda s, t: msgspec.structs.replace(s, name=(s.name or "") + "!"),
    "on_failure": lambda s, t: msgspec.structs.replace(
        s, on_failure="continue" if s.on_failure == "stop" else "stop"
    ),
    "node id": lambda s, t: msgspec.structs.replace(
        s, nodes=[msgspec.structs.replace(n, id=n.id + "_") if n.id == t else n for n in s.nodes]
    ),
    "node type": lambda s, t: msgspec.structs.replace(
        s, nodes=[msgspec.structs.replace(n, type=n.type + "2") if n.id == t else n for n in s.nodes]
    ),
    "config": lambda s, t: msgspec.structs.replace(
        s,
        nodes=[msgspec.structs.replace(n, config={**n.config, "k": 1}) if n.id == t else n for n in s.nodes],
    ),
    "retry": lambda s, t: msgspec.structs.replace(
        s,
        nodes=[
            msgspec.structs.replace(
                n, retry=RetryPolicy(max_attempts=(n.retry.max_attempts + 1 if n.retry else 9))
            )
            if n.id == t
            else n
            for n in s.nodes
        ],
    ),
    "timeout": lambda s, t: msgspec.structs.replace(
        s,
        nodes=[
            msgspec.structs.replace(n, timeout_ms=(n.timeout_ms or 0) + 1) if n.id == t else n
            for n in s.nodes
        ],
    ),
    "extra edge": lambda s, t: msgspec.structs.replace(s, edges=[*s.edges, edge(t, t)]),
    "node order": lambda s, t: msgspec.structs.replace(s, nodes=[*s.nodes[1:], s.nodes[0]]),
}


@FAST
@given(dags(), st.sampled_from(sorted(MUTATIONS)), st.data())
def test_spec_version_changes_with_any_field(s: WorkflowSpec, field: str, data: st.DataObject) -> None:
    if field == "node order":
        assume(len(s.nodes) > 1)
    target = data.draw(st.sampled_from([n.id for n in s.nodes]))
    changed = MUTATIONS[field](s, target)
    assert changed != s
    assert spec_version(changed) != spec_version(s)
