"""Dependencies the route handlers receive (``Provide``): the runtime, once it is ready."""

from __future__ import annotations

from typing import Any

from litestar import Request

from service.api.errors import problem
from service.runtime import Runtime


async def provide_runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    if not runtime.readiness.ready or runtime.store is None:
        raise problem(503, "Service not ready", runtime.readiness.error or "dependencies are still starting")
    return runtime
