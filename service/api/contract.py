"""The OpenAPI document (``/schema/openapi.json``) as the contract clients are generated from.

Each route declares its own statuses (``errors.problem_responses``); this module adds, in one
place, what Litestar's route decorators cannot say:

- operation ids: the handler's name (``start_run``), stable and readable in generated clients;
- the bearer credential every route but ``/health`` and ``/ready`` needs (a security scheme);
- the headers that come with some problems (``WWW-Authenticate`` on 401, ``Retry-After`` on 429);
- request bodies as they are read: optional where the route has defaults for a missing body,
  and the workflow spec of ``POST /v1/workflows`` (JSON or YAML), which its handler reads raw;
- links from what a response creates to what can be done with it next (register a workflow,
  start a run of it, read, cancel or fork that run), which clients (and schemathesis' stateful
  tests) follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

# Litestar's own schema plugin for msgspec Structs (not exported; litestar is pinned below 3).
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    Components,
    Link,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.plugins import ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.types import Method

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

BEARER: Final = "bearer"
SECURITY: Final[list[dict[str, list[str]]]] = [{BEARER: []}]
"""Every operation needs the credential unless it says otherwise (``security=PUBLIC``)."""
PUBLIC: Final[list[dict[str, list[str]]]] = [{}]
"""The security of a public operation (``/health``, ``/ready``): no credential needed."""

COMPONENTS: Final = Components(
    security_schemes={
        BEARER: SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="API key (flk_<key_id>_<secret>) or JWT",
            description="`Authorization: Bearer <token>`: an API key (`flowledger keys create`) or a "
            "JWT from a configured identity provider. The console's session cookie is accepted too.",
        )
    }
)


def operation_id(handler: HTTPRouteHandler, _method: Method, _path: list[str | Any]) -> str:
    """``OpenAPIConfig.operation_id_creator``: the handler's function name."""
    return handler.handler_name


_HEADERS: Final[dict[str, dict[str, OpenAPIHeader | Reference]]] = {
    "401": {
        "WWW-Authenticate": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING),
            description='The scheme to authenticate with: `Bearer realm="flowledger"`',
        )
    },
    "429": {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING), description="Seconds to wait before the next request"
        )
    },
}


def _run(run_id: str = "$response.body#/run_id") -> dict[str, Any]:
    return {"run_id": run_id}


_RUN_LINKS: Final = {
    "GetRun": Link(operation_id="get_run", parameters=_run(), description="The run's summary"),
    "RunEvents": Link(operation_id="run_events", parameters=_run(), description="The run's events"),
    "RunLineage": Link(operation_id="get_lineage", parameters=_run(), description="The run's DAG"),
    "RunState": Link(
        operation_id="run_state_at",
        parameters={**_run(), "at_seq": 0},
        description="The run's state after its first event (run_queued, seq 0)",
    ),
    "CancelRun": Link(operation_id="cancel_run", parameters=_run(), description="Cancel the run"),
    "ReplayRun": Link(
        operation_id="replay_run",
        parameters=_run(),
        request_body={"from_node": None, "from_failure": False, "overrides": {}, "workflow_version": None},
        description="Fork the whole run once it has ended (409 before)",
    ),
}
_WORKFLOW_LINKS: Final = {
    "StartRun": Link(
        operation_id="start_run",
        parameters={"workflow_id": "$response.body#/id"},
        request_body={"version": "$response.body#/version"},
        description="Start a run of this version of the workflow",
    ),
    "GetWorkflow": Link(
        operation_id="get_workflow",
        parameters={"workflow_id": "$response.body#/id", "version": "$response.body#/version"},
        description="The registered spec",
    ),
}
LINKS: Final[dict[str, dict[str, dict[str, Link]]]] = {
    "register_workflow": {"201": _WORKFLOW_LINKS, "200": _WORKFLOW_LINKS},
    "start_run": {"202": _RUN_LINKS},
    "replay_run": {
        "202": {
            **_RUN_LINKS,
            "DiffRuns": Link(
                operation_id="diff_two_runs",
                parameters={
                    "run_id": "$response.body#/parent_run_id",
                    "other_run_id": "$response.body#/run_id",
                },
                description="Compare the fork with the run it was forked from",
            ),
        }
    },
    "cancel_run": {"202": {"GetRun": _RUN_LINKS["GetRun"], "RunEvents": _RUN_LINKS["RunEvents"]}},
}
"""Operation id -> status -> the links of that response."""

WORKFLOW_SPEC_BODY: Final = RequestBody(
    required=True,
    description="The workflow spec, as JSON or as YAML of the same shape (without a Content-Type, "
    "JSON when it starts with `{`, else YAML)",
    content={
        "application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/WorkflowSpec")),
        "application/yaml": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description="YAML text")),
    },
)
REQUEST_BODIES: Final = {"register_workflow": WORKFLOW_SPEC_BODY}
"""Bodies a handler reads raw (so Litestar cannot see them), by operation id."""


@dataclass
class ApiOperation(Operation):
    """Litestar's ``Operation``, completed with this module's declarations as it is built."""

    def __post_init__(self) -> None:
        op = self.operation_id or ""
        if op in REQUEST_BODIES:
            self.request_body = REQUEST_BODIES[op]
        elif isinstance(self.request_body, RequestBody):
            self.request_body.required = not _admits_null(self.request_body)
        for status, response in (self.responses or {}).items():
            if not isinstance(response, OpenAPIResponse):
                continue
            if status in _HEADERS:
                response.headers = {**(response.headers or {}), **_HEADERS[status]}
            if links := LINKS.get(op, {}).get(status):
                response.links = dict(links)


def _admits_null(body: RequestBody) -> bool:
    """A body schema that allows ``null`` (``data: X | None = None``): the route has defaults for
    every field and reads no body at all the same way, so the body is optional."""
    for media in body.content.values():
        schema = media.schema
        if isinstance(schema, Schema):
            options = schema.one_of or schema.any_of or []
            if any(isinstance(o, Schema) and o.type == OpenAPIType.NULL for o in options):
                return True
    return False


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """A Struct that forbids unknown fields says so (``additionalProperties: false``): the API
    refuses a body field this document does not name, so the document must not allow one."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        if not super().is_plugin_supported_field(field_definition):
            return False
        info = msgspec.inspect.type_info(field_definition.type_)
        return isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


class ContractPlugin(ReceiveRoutePlugin):
    """Every HTTP route's OpenAPI operation is an :class:`ApiOperation`."""

    def receive_route(self, route: BaseRoute) -> None:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                handler.operation_class = ApiOperation
