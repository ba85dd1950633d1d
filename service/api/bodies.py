"""Request bodies, checked before anything decodes them: the media type (415 for one a route does
not read), the nesting depth (400 past ``Settings.max_json_depth``: decoders recurse, so a deep
body would otherwise end in a ``RecursionError``) and, for JSON, that it is JSON at all (400
naming the body, not a decoder's bare "Input data was truncated")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import msgspec
from litestar import Request

from service.api.errors import problem
from service.domain.nesting import TooDeep, check_json_depth

MAX_DEPTH_STATE: Final = "max_json_depth"
"""The app state key of the depth limit (``Settings.max_json_depth``)."""

YAML_TYPES: Final = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
UNTYPED: Final = frozenset({"text/plain", "application/octet-stream"})
"""Media types that say nothing about the format: the content decides (as with none at all)."""


def media_type(request: Request[Any, Any, Any]) -> str | None:
    """The body's media type (``Content-Type`` without parameters, lower case), None when unset."""
    value = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return value or None


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def max_depth(request: Request[Any, Any, Any]) -> int:
    return int(request.app.state[MAX_DEPTH_STATE])


def too_deep(exc: TooDeep) -> Exception:
    return problem(400, "Nested too deeply", str(exc), max_depth=exc.limit)


def json_body(body_type: Any) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """The ``before_request`` of a route whose body is JSON of ``body_type`` (a ``Struct | None``).

    No body at all is left to the route (it has defaults for everything). Any other body must be
    JSON (415 for another declared media type), nest at most ``max_json_depth`` levels and
    decode strictly as ``body_type`` (400 naming the field otherwise: the framework's own
    decoding would coerce, e.g. ``0`` to ``false``, what the document says is wrong).
    """
    decoder = msgspec.json.Decoder(body_type)

    async def check(request: Request[Any, Any, Any]) -> None:
        body = await request.body()
        if not body.strip():
            return
        media = media_type(request)
        if media is not None and not is_json(media):
            raise problem(
                415,
                "Unsupported media type",
                f"this operation reads a JSON body (Content-Type: application/json), not {media}",
            )
        try:
            check_json_depth(body, max_depth(request), "the request body")
        except TooDeep as exc:
            raise too_deep(exc) from None
        try:
            decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise problem(400, "Invalid request body", f"the request body is invalid: {exc}") from None
        except msgspec.DecodeError as exc:
            raise problem(400, "Malformed JSON body", f"the request body is not valid JSON: {exc}") from None

    return check


def spec_format(request: Request[Any, Any, Any]) -> Literal["json", "yaml", "auto"]:
    """How to read a workflow spec body: by its media type (JSON or YAML); untyped, by its first
    character. Any other media type is a 415 naming the ones accepted."""
    media = media_type(request)
    if media is None or media in UNTYPED:
        return "auto"
    if is_json(media):
        return "json"
    if media in YAML_TYPES or media.endswith("+yaml"):
        return "yaml"
    raise problem(
        415,
        "Unsupported media type",
        f"a workflow spec is JSON (Content-Type: application/json) or YAML (application/yaml), not {media}",
    )
