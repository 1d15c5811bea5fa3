"""The OpenAPI spec against the real server: Schemathesis generates requests for every documented operation (valid
ones and, in its negative mode, invalid ones) and checks every answer with all of its checks: no 5xx, only
documented status codes, content types and headers, bodies that match the documented schemas, 405 with an exact
``Allow`` for methods an operation does not take, schema-violating requests refused.

The requests go to a throwaway ``msgtrace ingest`` process holding the three captured client requests, so the query
endpoints have data to run over. Nothing is excluded: DELETE /api/v1/traces/{trace_id} may hide a trace of this
server's data, which no other test reads; the OTLP receive paths may store what Schemathesis sends.

The spec is built from the application in this process, because Schemathesis generates one test per operation at
collection time, before any fixture has started a server (its fixture-based loader does not run under pytest 9);
:func:`test_served_spec_is_the_one_tested` checks that the server serves exactly that spec. Examples per operation
are bounded (``MAX_EXAMPLES``; ``MSGTRACE_STRESS=1`` runs ten times more) and derived from a fixed seed, so a CI
failure can be reproduced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance

from msgtrace.config import IngestConfig
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.server.app import create_app
from tests.conftest import CAPTURES, Server, capture, running_server

STRESS = os.environ.get("MSGTRACE_STRESS") == "1"
MAX_EXAMPLES = 250 if STRESS else 25

# Building the app touches no file: the ingestor is started by the app's lifespan, which never runs here.
SPEC = create_app(Ingestor(IngestConfig(data_dir=Path("/nonexistent/msgtrace-spec-only")))).openapi()
# OTLP protobuf bodies are documented as binary strings: sent as the bytes generated.
schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")
schema = schemathesis.openapi.from_dict(SPEC)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=not STRESS, database="none")

# Where a valid request cannot be told from the schema alone, a 400 for a request the schema allows is correct:
# the SQL text of POST /api/v1/sql (any string is schema-valid; `SELEC 1` is a 400) and the OTLP bodies (protobuf
# bytes or OTLP/JSON; the spec describes their media types, not their encoding). Every other check still runs there.
OPAQUE_BODIES = {"/api/v1/sql", "/v1/traces", "/api/v1/traces/export"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory, "openapi") as server:
        for name in CAPTURES:
            path, headers, body, _ = capture(name)
            assert server.post(path, body, headers).status_code == 200
        yield server


def test_served_spec_is_the_one_tested(srv: Server) -> None:
    assert httpx.get(f"{srv.url}/openapi.json", timeout=30).json() == SPEC


@schema.parametrize()
def test_api_conforms_to_its_openapi_spec(case, srv: Server) -> None:  # type: ignore[no-untyped-def]
    excluded = [positive_data_acceptance] if case.path in OPAQUE_BODIES else []
    case.call_and_validate(base_url=srv.url, excluded_checks=excluded, timeout=30)
