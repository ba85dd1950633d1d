"""Node types by name: typed configs, async handlers, and plugins from entry points.

Guarantees the engine relies on:
- ``parse_config`` accepts exactly the config a node type declares (strict
  types, constraints, no unknown fields) or raises :class:`InvalidNodeConfig`
  naming the node type and the offending field;
- ``execute`` returns a JSON value (plain dicts, lists, str, int, float, bool,
  None: the output after a JSON round trip) or raises :class:`NodeFailure`; ``asyncio.CancelledError`` (and
  other ``BaseException``s) pass through untouched so cancellation and
  timeouts stay the caller's;
- a broken plugin is logged and skipped; it never stops the service and never
  leaves half of its node types registered.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, TypeVar

import httpx
import msgspec
import structlog

from schemas.events import WORKER_CRASHED, NodeError
from service.config import DEFAULT_TENANT
from service.engine.nodes.config_values import SECRET_KEY, dynamic_values, redact, resolve_config
from service.engine.nodes.egress import EgressPolicy
from service.engine.nodes.expressions import ExpressionError
from service.engine.nodes.http_transport import checked_client
from service.engine.nodes.isolated import CallFailed, IsolatedPool, LogRecord, WorkerCrashed, callable_ref
from service.engine.nodes.node_logs import log_level

ENTRY_POINT_GROUP = "flowledger.nodes"

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class JsonOutput(NamedTuple):
    """A node's output as JSON types, and its JSON encoding (what the event log records)."""

    value: Any
    encoded: bytes


def _log() -> Any:
    # Looked up per call rather than at import: a module-level proxy caches its
    # processors on first use (cache_logger_on_first_use), which would hide
    # these warnings from structlog.testing.capture_logs.
    return structlog.get_logger(__name__)


class NodeFailure(Exception):
    """Raised by handlers (or made from any exception) to fail a node attempt.

    ``kind`` is a stable classifier (``http_status``, ``expression_error``, or
    an exception class name); ``retryable=False`` tells the engine that another
    attempt cannot succeed, whatever the node's retry policy says.
    """

    def __init__(self, kind: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by Exception's default pickling.
        return (_rebuild_failure, (self.kind, self.message, self.retryable))

    def __repr__(self) -> str:
        return f"NodeFailure(kind={self.kind!r}, message={self.message!r}, retryable={self.retryable!r})"

    @classmethod
    def from_exception(cls, exc: BaseException) -> NodeFailure:
        """The failure for an arbitrary exception: its class name as ``kind``, ``str(exc)`` as message."""
        if isinstance(exc, NodeFailure):
            return exc
        return cls(type(exc).__name__, str(exc) or type(exc).__name__)

    def to_error(self) -> NodeError:
        """The event-body form (``node_execute_after.error``)."""
        return NodeError(kind=self.kind, message=self.message, retryable=self.retryable)


def _rebuild_failure(kind: str, message: str, retryable: bool) -> NodeFailure:
    return NodeFailure(kind, message, retryable=retryable)


SECRET_STAND_INS = ("postgresql://user@stand-in.invalid/db", "https://stand-in.invalid/", "stand-in-token")
"""Values a secret is checked as at registration (its real value is known only at run time)."""


class NodeContext(msgspec.Struct, frozen=True):
    """What a handler knows about the attempt it runs."""

    run_id: str
    node_id: str
    node_type: str
    attempt: int  # 1-based
    # {"inputs": <run inputs>, "nodes": {<upstream node id>: <its output>, ...}}
    document: dict[str, Any]
    secrets: dict[str, str] = {}
    """The secrets this attempt's config named (name -> value): redacted from whatever the
    handler raises before it is logged or recorded."""
    tenant: str = DEFAULT_TENANT
    """The run's tenant (whose secrets and vector indexes the node uses)."""
    log_sink: Any = None
    """Where ``log`` lines go: the attempt's ``NodeLogCollector`` (``node_logs.py``); None
    discards them. Never sent to a worker process (see ``_execute_isolated``)."""

    def __repr__(self) -> str:  # never print secret values
        return f"NodeContext(run_id={self.run_id!r}, node_id={self.node_id!r}, attempt={self.attempt})"

    def log(self, level: str, message: str, **fields: Any) -> None:
        """Record a log line of this attempt (``debug``, ``info``, ``warning`` or ``error``;
        another level is a ``ValueError``). It is stored as a ``node_log`` event, capped per
        attempt, with this attempt's secret values redacted from the message and the fields."""
        checked = log_level(level)
        if self.log_sink is not None:
            self.log_sink.add(checked, message, fields, secrets=self.secrets)


def _receive_logs(ctx: NodeContext, lines: list[LogRecord], dropped: int) -> None:
    """Lines an isolated call logged, into the attempt's collector (redacted and capped there)."""
    for line in lines:
        try:
            ctx.log_sink.add(line.level, line.message, line.fields, secrets=ctx.secrets, at=line.at)
        except ValueError:  # not a level the worker would send; keep the line anyway
            ctx.log_sink.add("info", line.message, line.fields, secrets=ctx.secrets, at=line.at)
    if dropped:
        ctx.log_sink.count_dropped(dropped)


# (typed config Struct, context) -> JSON-serializable output
Handler = Callable[[Any, NodeContext], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class NodeType:
    name: str
    config_type: type[msgspec.Struct]
    handler: Handler
    description: str = ""
    check: Callable[[Any], str | None] | None = None
    """Run on a parsed config when a workflow is registered (never at execution): a problem
    that would make every run fail (e.g. a python callable whose module does not exist), or None."""
    isolated: bool = False
    """Run the handler in a worker process of the registry's pool (``isolated.py``), not in the
    service: what it does to its process (a crash, a memory or CPU-time limit) fails only the
    attempt, with ``worker_crashed``. The handler and config type must be module-level (the
    worker imports them by name); a config's ``memory_mb`` and ``cpu_seconds`` fields, when it
    has them, override the pool's limits."""
    secret_fields: frozenset[str] = frozenset()
    """Config fields that a workflow spec may only fill with ``{"$secret": NAME}`` (or leave out):
    a literal credential would be stored in the spec and shown by the API."""


class UnknownNodeType(LookupError):
    """A node type name that no built-in or plugin registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown node type {name!r}; known types: {', '.join(known) or '(none)'}")
        self.name = name
        self.known = known


class InvalidNodeConfig(ValueError):
    """A node config that does not match its type's config Struct."""

    def __init__(self, node_type: str, problem: str) -> None:
        super().__init__(f"invalid config for node type {node_type!r}: {problem}")
        self.node_type = node_type
        self.problem = problem


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip().splitlines()[0] if doc else ""


class NodeRegistry:
    """Node types by name, plus the resources their handlers share: one HTTP client (connecting
    only where ``egress`` allows) and the pool of worker processes of isolated node types."""

    def __init__(self, *, egress: EgressPolicy | None = None, isolated: IsolatedPool | None = None) -> None:
        self._types: dict[str, NodeType] = {}
        self._http_client: httpx.AsyncClient | None = None
        self._loaded_entry_points: set[tuple[str, str, str]] = set()
        self.egress = egress or EgressPolicy()
        self.isolated = isolated or IsolatedPool()

    # -- registration -------------------------------------------------------

    def register(self, node_type: NodeType) -> None:
        """Add a node type; a name already taken raises ``ValueError``."""
        name = node_type.name
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(
                f"invalid node type name {name!r}: must be a non-empty string without surrounding spaces"
            )
        if name in self._types:
            raise ValueError(f"node type {name!r} is already registered")
        config_type = node_type.config_type
        if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
            raise TypeError(
                f"config type of node type {name!r} must be a msgspec.Struct subclass, got {config_type!r}"
            )
        if not config_type.__struct_config__.forbid_unknown_fields:
            # Otherwise a misspelt option would be dropped silently instead of refused.
            raise TypeError(
                f"config type {config_type.__name__} of node type {name!r} must be declared "
                "with forbid_unknown_fields=True"
            )
        handler = node_type.handler
        if not callable(handler):
            raise TypeError(f"handler of node type {name!r} is not callable")
        if inspect.isfunction(handler) and not inspect.iscoroutinefunction(handler):
            raise TypeError(f"handler {handler.__qualname__} of node type {name!r} must be an async function")
        if node_type.isolated:
            try:
                callable_ref(handler)
                callable_ref(config_type)
            except ValueError as exc:
                raise TypeError(
                    f"isolated node type {name!r}: a worker process cannot import it: {exc}"
                ) from None
        self._types[name] = node_type

    def node(self, name: str, config: type[msgspec.Struct], description: str = "") -> Callable[[H], H]:
        """Decorator registering an async handler under ``name``; returns the handler unchanged."""

        def decorate(handler: H) -> H:
            self.register(NodeType(name, config, handler, description or _first_doc_line(handler)))
            return handler

        return decorate

    # -- lookup -------------------------------------------------------------

    def get(self, name: str) -> NodeType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownNodeType(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def check_config(self, name: str, config: dict[str, Any]) -> msgspec.Struct | None:
        """``parse_config`` plus the type's registration check: what registering a workflow runs.

        A config with ``{"$expr": ...}`` or ``{"$secret": ...}`` values is only known at run time:
        its expressions must compile and its keys must be fields of the type's config; the rest
        is checked when the node runs (returns None then)."""
        try:
            dynamic = dynamic_values(config)
        except ExpressionError as exc:
            raise InvalidNodeConfig(name, str(exc)) from None
        for field in sorted(self.get(name).secret_fields & set(config)):
            value = config[field]
            kinds = [kind for _where, kind, _arg in dynamic_values(value, field)]
            if not isinstance(value, dict) or kinds != [SECRET_KEY]:
                raise InvalidNodeConfig(
                    name,
                    f'{field} must be {{"$secret": "NAME"}} (a secret set with `flowledger secrets set NAME`), '
                    "not a literal value: the spec is stored and shown by the API",
                )
        if dynamic:
            fields = set(self.get(name).config_type.__struct_fields__)
            unknown = sorted(set(config) - fields)
            if unknown:
                raise InvalidNodeConfig(
                    name, f"unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(fields))}"
                )
            if all(kind == SECRET_KEY for _where, kind, _arg in dynamic):
                self._check_with_secret_stand_ins(name, config)
            return None
        parsed = self.parse_config(name, config)
        check = self.get(name).check
        if check is not None and (problem := check(parsed)) is not None:
            raise InvalidNodeConfig(name, problem)
        return parsed

    def _check_with_secret_stand_ins(self, name: str, config: dict[str, Any]) -> None:
        """Check a config whose only run-time values are secrets: everything but the secrets'
        values is known now. Each secret is replaced by stand-ins of the shapes a secret takes
        (a database URL, an https URL, a token); the config passes if one set of stand-ins
        parses. When none does, a problem that every set shows is not the secrets' (it is
        reported); problems that differ between sets are about the secrets' values, which are
        only known at run time (not reported)."""
        problems: list[str] = []
        names = {argument for _where, _kind, argument in dynamic_values(config)}
        for stand_in in SECRET_STAND_INS:
            try:
                parsed = self.parse_config(name, resolve_config(config, {}, dict.fromkeys(names, stand_in)))
            except InvalidNodeConfig as exc:
                problems.append(exc.problem)
                continue
            check = self.get(name).check
            if check is not None and (problem := check(parsed)) is not None:
                raise InvalidNodeConfig(name, problem)
            return
        common = {p for p in problems if problems.count(p) > 1}
        if common:
            raise InvalidNodeConfig(name, sorted(common)[0])

    def parse_config(self, name: str, config: dict[str, Any]) -> msgspec.Struct:
        """The typed config, or :class:`InvalidNodeConfig` naming what is wrong (``UnknownNodeType`` for a bad name)."""
        config_type = self.get(name).config_type
        try:
            return msgspec.convert(config, type=config_type, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidNodeConfig(name, str(exc)) from None

    # -- execution ----------------------------------------------------------

    def http_client(self) -> httpx.AsyncClient:
        """The registry's shared HTTP client, created on first use; closed by :meth:`aclose`."""
        if self._http_client is None or self._http_client.is_closed:
            # Redirects are followed as a browser or n8n would (each hop's connection is checked
            # against the egress policy); per-request timeouts are set by the caller.
            self._http_client = checked_client(self.egress)
        return self._http_client

    async def aclose(self) -> None:
        """Release shared resources: the HTTP client and the worker processes; the registry stays
        usable (a new client and new workers are made on demand)."""
        client, self._http_client = self._http_client, None
        if client is not None:
            await client.aclose()
        await self.isolated.aclose()

    async def execute(self, name: str, config: msgspec.Struct, ctx: NodeContext) -> Any:
        """Run one attempt; returns its JSON-ready output or raises :class:`NodeFailure`.

        Any ``Exception`` becomes a ``NodeFailure`` (kind = its class name,
        chained as ``__cause__``); ``CancelledError`` propagates untouched.
        """
        return (await self.execute_json(name, config, ctx)).value

    async def execute_json(self, name: str, config: msgspec.Struct, ctx: NodeContext) -> JsonOutput:
        """Like :meth:`execute`, with the output's JSON encoding too: the executor records
        those bytes (size, SHA-256, blob) instead of encoding the output again."""
        try:
            node_type = self.get(name)
        except UnknownNodeType as exc:
            raise NodeFailure("unknown_node_type", str(exc), retryable=False) from None
        if not isinstance(config, node_type.config_type):
            raise NodeFailure(
                "invalid_config",
                f"node type {name!r} expects a {node_type.config_type.__name__} config, "
                f"got {type(config).__name__}",
                retryable=False,
            )
        if node_type.isolated:
            value = await self._execute_isolated(node_type, config, ctx)
            return JsonOutput(value, _json_encode(value))
        try:
            result = await node_type.handler(config, ctx)
        except NodeFailure:
            raise
        except Exception as exc:
            failure = NodeFailure.from_exception(exc)
            if ctx.secrets:  # the traceback could quote a secret: log only the redacted message
                failure = NodeFailure(
                    failure.kind, redact(failure.message, ctx.secrets), retryable=failure.retryable
                )
                _log().warning(
                    "node handler raised",
                    run_id=ctx.run_id,
                    node_id=ctx.node_id,
                    node_type=name,
                    attempt=ctx.attempt,
                    error=f"{failure.kind}: {failure.message}",
                )
                raise failure from None
            _log().warning(
                "node handler raised",
                run_id=ctx.run_id,
                node_id=ctx.node_id,
                node_type=name,
                attempt=ctx.attempt,
                exc_info=exc,
            )
            raise failure from exc
        try:
            # A JSON round trip: downstream nodes then see exactly what the event
            # log stores (and what a recovered or replayed run reads back) -
            # Structs, tuples and datetimes become JSON types, and the output is
            # detached from any object the handler keeps mutating.
            encoded = _json_encode(result)
            return JsonOutput(_json_decode(encoded), encoded)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NodeFailure(
                "invalid_output",
                f"node type {name!r} returned a value that is not JSON-serializable: {exc}",
                retryable=False,
            ) from exc

    async def _execute_isolated(self, node_type: NodeType, config: msgspec.Struct, ctx: NodeContext) -> Any:
        """One attempt in a worker process; its output is already JSON (it came back as JSON)."""
        name = node_type.name
        try:
            return await self.isolated.call(
                callable_ref(node_type.handler),
                callable_ref(node_type.config_type),
                msgspec.to_builtins(config),
                {k: v for k, v in msgspec.structs.asdict(ctx).items() if k != "log_sink"},
                memory_mb=getattr(config, "memory_mb", None),
                cpu_seconds=getattr(config, "cpu_seconds", None),
                on_logs=None if ctx.log_sink is None else partial(_receive_logs, ctx),
            )
        except WorkerCrashed as exc:
            message = f"node {ctx.node_id}: {exc}"
            fields = {"run_id": ctx.run_id, "node_id": ctx.node_id, "node_type": name, "attempt": ctx.attempt}
            _log().warning("node worker crashed", error=message, **fields)
            raise NodeFailure(WORKER_CRASHED, message, retryable=True) from None
        except CallFailed as exc:
            message = redact(exc.message, ctx.secrets)
            if exc.traceback:  # an unexpected exception (not a NodeFailure): log where it came from
                _log().warning(
                    "node handler raised",
                    run_id=ctx.run_id,
                    node_id=ctx.node_id,
                    node_type=name,
                    attempt=ctx.attempt,
                    error=f"{exc.kind}: {message}",
                    traceback=redact(exc.traceback, ctx.secrets),
                )
            raise NodeFailure(exc.kind, message, retryable=exc.retryable) from None

    # -- plugins ------------------------------------------------------------

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register the node types of every plugin in ``group``; returns the names added.

        An entry point names either a :class:`NodeType` or a callable
        ``register(registry)``. One that fails to import, raises, or registers a
        taken name is logged as a warning and rolled back. Entry points already
        loaded into this registry are skipped, so calling this twice is harmless.
        """
        added: list[str] = []
        try:
            entry_points = importlib.metadata.entry_points(group=group)
        except Exception as exc:  # e.g. an unrelated distribution with unreadable metadata
            _log().warning("node plugins not loaded", group=group, error=f"{type(exc).__name__}: {exc}")
            return added
        for ep in entry_points:
            key = (group, ep.name, ep.value)
            if key in self._loaded_entry_points:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            before = dict(self._types)
            try:
                target = ep.load()
                if isinstance(target, NodeType):
                    self.register(target)
                elif callable(target):
                    result = target(self)
                    if inspect.isawaitable(result):
                        if inspect.iscoroutine(result):
                            result.close()  # never awaited: no "coroutine was never awaited" noise
                        raise TypeError("register(registry) must be a plain function, not async")
                else:
                    raise TypeError(
                        f"entry point must name a NodeType or a register(registry) callable, "
                        f"got {type(target).__name__}"
                    )
            except Exception as exc:
                self._types = before  # no half-registered plugin
                _log().warning(
                    "node plugin failed to load; skipped",
                    entry_point=ep.name,
                    value=ep.value,
                    group=group,
                    distribution=dist,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            self._loaded_entry_points.add(key)
            new = [name for name in self._types if name not in before]
            _log().debug("node plugin loaded", entry_point=ep.name, distribution=dist, node_types=new)
            added.extend(new)
        return added
