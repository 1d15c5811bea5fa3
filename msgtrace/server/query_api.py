"""The read side of the REST API, under ``/api/v1``: a thin layer over :class:`msgtrace.query.store.Store`."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["query"])
