"""The portal: Azure's Serial Console pane for a browser, served at ``/``.

``/`` is the page; ``/portal/*`` its scripts and styles, built from ``web/`` into
``gateway/portal/dist`` (``make`` runs ``npm ci`` and the build; nothing is fetched at run
time, nothing comes from a CDN). The page signs in with ``/oauth2/token`` and then speaks
the same REST and websocket doors as every other client.

Every answer carries a Content-Security-Policy that lets the page load and connect only to
this gateway (no inline script, no other origin, no framing), so a token the page holds
cannot be sent elsewhere by injected markup. WebAssembly may be compiled (the recording
player's terminal is WebAssembly); strings may not be evaluated as script. When the files
are not built, ``/`` says how to build them instead of a bare 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from gateway.portal import DIST

router = APIRouter(include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

NOT_BUILT = """<!doctype html>
<meta charset="utf-8"><title>Serial Console Lab</title>
<h1>The portal is not built</h1>
<p>Its files are made from <code>web/</code> by <code>make run-lab</code> (or
<code>make portal</code>), which runs <code>npm ci</code> and <code>npm run build</code>.
Build it, then reload this page. The REST API and the websocket console work without it:
see <a href="/docs">/docs</a>.</p>
"""


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**SECURITY_HEADERS, **(extra or {})}


@router.get("/")
async def index() -> Response:
    page = DIST / "index.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT, status_code=503, headers=_headers())
    return HTMLResponse(page.read_text("utf-8"), headers=_headers({"Cache-Control": "no-cache"}))


class _Assets(StaticFiles):
    """The built scripts and styles, with the portal's security headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in _headers().items()]
                headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, with_headers)


def install(app: FastAPI, dist: Path = DIST) -> None:
    """Serve the portal on ``app``: the page at ``/``, its files under ``/portal``."""
    app.include_router(router)
    app.mount("/portal", _Assets(directory=dist, check_dir=False), name="portal")
