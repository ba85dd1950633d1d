"""The built-in node types: noop, transform, branch, delay, http, python, fail.

Each has a frozen config Struct that refuses unknown fields and checks what
can be checked before a run starts (JMESPath syntax and function calls, the
``module:attr`` shape of a callable, URL scheme, non-negative delays).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import re
import sys
from typing import Annotated, Any, Literal

import httpx
import msgspec
from jmespath import exceptions as jmespath_errors

from service.engine.nodes.expressions import compile_expression, evaluate, is_truthy
from service.engine.nodes.http_transport import EgressDenied
from service.engine.nodes.registry import NodeContext, NodeFailure, NodeRegistry, NodeType

# -- configs -------------------------------------------------------------------


class NoopConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class TransformConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    expression: str

    def __post_init__(self) -> None:
        # msgspec turns a ValueError raised here into a ValidationError, so a bad
        # expression is refused when the workflow is registered, not mid-run.
        compile_expression(self.expression)


class BranchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    expression: str

    def __post_init__(self) -> None:
        compile_expression(self.expression)


class DelayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ms: Annotated[int, msgspec.Meta(ge=0)]


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


class HttpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    method: HttpMethod
    url: str
    headers: dict[str, str] = {}
    json: Any = None  # sent as the JSON body when not null
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 10_000

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid url {self.url!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"url must be an absolute http:// or https:// URL, got {self.url!r}")


# "package.module:function" or "package.module:Class.method"
_CALLABLE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


MIN_MEMORY_MB = 64
"""A worker process needs about 50 MiB of address space before it runs any user code."""


class PythonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    callable: str
    memory_mb: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Address-space limit of the worker process (MiB; 0: none); unset: FLOWLEDGER_PYTHON_MEMORY_MB."""
    cpu_seconds: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """CPU seconds the call may use (0: no limit); unset: FLOWLEDGER_PYTHON_CPU_SECONDS."""

    def __post_init__(self) -> None:
        if not _CALLABLE_PATH.match(self.callable):
            raise ValueError(f"callable must look like 'package.module:function', got {self.callable!r}")
        if self.memory_mb and self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(
                f"memory_mb must be 0 (no limit) or at least {MIN_MEMORY_MB}, got {self.memory_mb}"
            )


class FailConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message: str = "failed on purpose"
    times: Annotated[int, msgspec.Meta(ge=0)] | None = None


# -- handlers ------------------------------------------------------------------


async def noop(config: NoopConfig, ctx: NodeContext) -> None:
    """Does nothing; output null."""
    return None


def _evaluate(expression: str, ctx: NodeContext) -> Any:
    try:
        return evaluate(expression, ctx.document)
    except jmespath_errors.JMESPathError as exc:
        # The same expression over the same document fails the same way again.
        raise NodeFailure("expression_error", f"{expression!r}: {exc}", retryable=False) from exc


async def transform(config: TransformConfig, ctx: NodeContext) -> Any:
    """Output = JMESPath ``expression`` over the run document."""
    return _evaluate(config.expression, ctx)


async def branch(config: BranchConfig, ctx: NodeContext) -> dict[str, str]:
    """Output ``{"branch": "true"}`` when ``expression`` is truthy (JMESPath's sense), else ``"false"``."""
    return {"branch": "true" if is_truthy(_evaluate(config.expression, ctx)) else "false"}


async def delay(config: DelayConfig, ctx: NodeContext) -> dict[str, int]:
    """Sleeps ``ms`` milliseconds (a durable timer in a run); output ``{"delayed_ms": ms}``."""
    await asyncio.sleep(config.ms / 1000)
    return {"delayed_ms": config.ms}


def _is_json_content_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def make_http_handler(registry: NodeRegistry) -> Any:
    """The ``http`` handler, sending through ``registry``'s shared client."""

    async def http(config: HttpConfig, ctx: NodeContext) -> dict[str, Any]:
        """One HTTP request; output ``{status_code, headers, body}`` (body parsed when JSON); non-2xx fails."""
        method, url = config.method, config.url
        seconds = config.timeout_ms / 1000
        try:
            # httpx's timeout bounds each phase; asyncio.timeout bounds the whole exchange.
            async with asyncio.timeout(seconds):
                response = await registry.http_client().request(
                    method,
                    url,
                    headers=config.headers,
                    json=config.json,
                    timeout=httpx.Timeout(seconds),
                )
        except EgressDenied as exc:
            hop = "" if exc.host == httpx.URL(url).host else " (a redirect target)"
            raise NodeFailure("egress_denied", f"{method} {url}: {exc}{hop}", retryable=False) from None
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise NodeFailure(
                "http_timeout", f"{method} {url} timed out after {config.timeout_ms} ms", retryable=True
            ) from exc
        except httpx.RequestError as exc:
            detail = str(exc) or type(exc).__name__
            raise NodeFailure("http_error", f"{method} {url} failed: {detail}", retryable=True) from exc

        code = response.status_code
        if not 200 <= code < 300:
            raise NodeFailure(
                "http_status",
                f"{method} {url} answered {code}: {response.text[:200]}",
                retryable=code >= 500 or code == 429,
            )
        body: Any
        if _is_json_content_type(response.headers.get("content-type", "")):
            if not response.content:
                body = None
            else:
                try:
                    body = msgspec.json.decode(response.content)
                except msgspec.DecodeError as exc:
                    raise NodeFailure(
                        "http_decode",
                        f"{method} {url} answered {code} with invalid JSON: {exc}",
                        retryable=False,
                    ) from exc
        else:
            body = response.text
        return {"status_code": code, "headers": dict(response.headers.items()), "body": body}

    return http


def python_callable_problem(config: PythonConfig) -> str | None:
    """Why ``config.callable`` cannot be called, found without running the module's code where
    possible: its module must exist (only parent packages are imported to look for it), and when
    the module is already loaded, the attribute must exist and be callable."""
    module_name, _, attr_path = config.callable.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        return f"cannot import module {module_name!r} of callable {config.callable!r}: {exc}"
    if spec is None:
        return f"no module named {module_name!r} (callable {config.callable!r}); is its package installed?"
    module = sys.modules.get(module_name)
    if module is None:
        return None
    target: Any = module
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            return f"module {module_name!r} has no attribute {attr_path!r} (callable {config.callable!r})"
        target = getattr(target, attr)
    return None if callable(target) else f"{config.callable!r} is not callable"


def _import_callable(path: str) -> Any:
    module_name, _, attr_path = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    return target


async def python(config: PythonConfig, ctx: NodeContext) -> Any:
    """Calls ``callable(document)`` in an isolated worker process; coroutine functions are awaited."""
    # Runs in the worker process (the node type is isolated): importing and calling user code
    # blocks nobody else, and the document is this process's own copy.
    try:
        func = _import_callable(config.callable)
    except MemoryError:
        raise  # the worker's memory limit: a crash, not an import problem
    except Exception as exc:
        raise NodeFailure(
            "python_import",
            f"cannot import {config.callable!r}: {type(exc).__name__}: {exc}",
            retryable=False,
        ) from exc
    if not callable(func):
        raise NodeFailure(
            "python_import",
            f"{config.callable!r} is a {type(func).__name__}, not a callable",
            retryable=False,
        )
    result = func(ctx.document)
    if inspect.isawaitable(result):  # a coroutine function (or one that returned a coroutine)
        result = await result
    return result


async def fail(config: FailConfig, ctx: NodeContext) -> dict[str, int]:
    """Fails the first ``times`` attempts (every attempt when ``times`` is absent); then ``{"attempt": n}``."""
    if config.times is None or ctx.attempt <= config.times:
        raise NodeFailure("fail", config.message)
    return {"attempt": ctx.attempt}


def builtin_node_types(registry: NodeRegistry) -> list[NodeType]:
    """The built-in node types; ``http`` is bound to ``registry``'s shared client."""
    handlers: list[tuple[str, type[msgspec.Struct], Any]] = [
        ("noop", NoopConfig, noop),
        ("transform", TransformConfig, transform),
        ("branch", BranchConfig, branch),
        ("delay", DelayConfig, delay),
        ("http", HttpConfig, make_http_handler(registry)),
        ("python", PythonConfig, python),
        ("fail", FailConfig, fail),
    ]
    checks = {"python": python_callable_problem}
    isolated = {"python"}
    return [
        NodeType(
            name,
            config_type,
            handler,
            (inspect.getdoc(handler) or "").splitlines()[0],
            checks.get(name),
            isolated=name in isolated,
        )
        for name, config_type, handler in handlers
    ]


def register_builtins(registry: NodeRegistry) -> None:
    for node_type in builtin_node_types(registry):
        registry.register(node_type)
