"""The one JSON error shape of the REST API, and the mapping of msgtrace errors to HTTP, done once here.

    {"error": {"status": 404, "code": "not_found", "message": "…"}}

The OTLP receive paths answer errors with a ``google.rpc.Status`` instead, as the OTLP/HTTP specification requires
(see :func:`msgtrace.ingest.receive.error_body`).

A 405 says in ``Allow`` every method its path takes (RFC 9110 §15.5.6): Starlette names only those of the first
route whose path matched, so ``OPTIONS /api/v1/traces/{id}`` said ``Allow: GET`` although DELETE works there too.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
         415: "unsupported_media_type", 422: "invalid_parameter", 500: "internal_error", 503: "unavailable",
         504: "timeout"}
RETRY_AFTER_SECONDS = "1"


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status code, again.")
    code: str = Field(description="The status as a word: " + ", ".join(f"`{c}`" for c in CODES.values()) + ".")
    message: str = Field(description="What went wrong, for a person.")


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_json(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"status": status, "code": CODES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_schema(description: str, *, retry_after: bool = False) -> dict[str, object]:
    """An OpenAPI ``responses`` entry documenting the error shape (and the ``Retry-After`` header of a 503)."""
    entry: dict[str, object] = {
        "description": description, "model": ErrorBody,
        "content": {"application/json": {"example": {"error": {"status": 0, "code": "…", "message": "…"}}}},
    }
    if retry_after:
        entry["headers"] = RETRY_AFTER_HEADER
    return entry


RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                                      "schema": {"type": "integer", "minimum": 0}}}
# Every route can answer these: the Host check (msgtrace/server/hosts.py) runs before routing.
FORBIDDEN = {403: error_schema("The `Host` header is not a local name nor in `MSGTRACE_ALLOWED_HOSTS` (the "
                               "server is bound to loopback: DNS-rebinding protection).")}


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method that some route takes on the request's path, for ``Allow``: each is tried against the routes
    (``BaseRoute.matches``; included routers answer for their own routes)."""
    def taken(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)

    return ", ".join(m for m in METHODS if taken(m))


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return error_json(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_json(422, f"{where}: {first.get('msg', 'invalid request')}")
