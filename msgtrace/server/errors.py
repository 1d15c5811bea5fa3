"""The one JSON error shape of the REST API, and the mapping of msgtrace errors to HTTP, done once here.

    {"error": {"status": 404, "code": "not_found", "message": "…"}}

The OTLP receive paths answer errors with a ``google.rpc.Status`` instead, as the OTLP/HTTP specification requires
(see :func:`msgtrace.ingest.receive.error_body`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
         415: "unsupported_media_type", 422: "invalid_parameter", 500: "internal_error", 503: "unavailable",
         504: "timeout"}
RETRY_AFTER_SECONDS = "1"


def error_json(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"status": status, "code": CODES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_schema(description: str) -> dict[str, object]:
    """An OpenAPI ``responses`` entry documenting the error shape."""
    return {
        "description": description,
        "content": {"application/json": {"example": {"error": {"status": 0, "code": "…", "message": "…"}}}},
    }


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_json(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_json(422, f"{where}: {first.get('msg', 'invalid request')}")
