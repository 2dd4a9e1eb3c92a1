"""The API's interactive docs, `/docs` (Swagger UI) and `/redoc`, served from
files installed with the gateway: FastAPI's defaults load Swagger UI and ReDoc
from a CDN, which leaves a blank page on a machine without internet. The
files come from the `fastapi-offline` PyPI package (MIT; it ships Swagger UI,
Apache-2.0, and ReDoc, MIT, with their licences), mounted here with FastAPI's
self-hosting recipe."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from gateway.api.auth import PUBLIC

ASSETS_PATH = "/docs-assets"


def assets_dir() -> str:
    """Where the installed Swagger UI and ReDoc files are."""
    return str(files("fastapi_offline") / "static")


def install_offline_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from the installed files; the app must be created with docs_url=None, redoc_url=None."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = f"{app.title} - API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    # Open like FastAPI's own docs routes (gateway.api.auth.mark_public): reading the API needs no key.
    for route in app.routes:
        if getattr(route, "path", None) in ("/docs", "/redoc", ASSETS_PATH):
            route.required_scope = PUBLIC
