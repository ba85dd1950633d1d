"""The web console: static ES modules and CSS from ``web/`` (in the wheel), no build step.

Every page URL (``/``, ``/runs/<id>``, ...) answers the same ``index.html``; its scripts route in
the browser and read only the public ``/v1`` API with the session cookie (``session.py``). These
routes are public (they hold no tenant data) and answer with a Content-Security-Policy that allows
nothing but this origin's own files: no inline script or style, no third party.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from service.api.auth import PUBLIC_OPT

WEB: Final = Path(__file__).parent / "web"
ASSETS_PATH: Final = "/console"
PAGES: Final = [
    "/",
    "/sign-in",
    "/runs",
    "/runs/{run_id:str}",
    "/workflows",
    "/workflows/{workflow_id:str}",
    "/stats",
]
"""The console's page URLs (shareable): each answers index.html and the page routes itself."""

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _secure(response: Response[Any]) -> Response[Any]:
    response.headers.update(SECURITY_HEADERS)
    return response


@get(PAGES, include_in_schema=False, opt={PUBLIC_OPT: True}, sync_to_thread=False)
def console_page() -> Response[bytes]:
    """index.html for every page URL (read per request: small, and edits show without a restart)."""
    return Response(
        (WEB / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


async def _after(response: Response[Any]) -> Response[Any]:
    return _secure(response)


def console_router() -> Router:
    assets = create_static_files_router(
        path=ASSETS_PATH,
        directories=[WEB],
        name="console_assets",
        opt={PUBLIC_OPT: True},
        after_request=_after,
        cache_control=CacheControlHeader(no_cache=True),  # revalidate: a new release shows at once
        include_in_schema=False,
    )
    return Router(path="/", route_handlers=[console_page, assets])
