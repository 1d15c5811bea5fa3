"""msgtrace: a columnar, analytics-first trace store for LLM agents and workflows.

OTLP spans in (``msgtrace ingest``), day-partitioned Parquet on disk, DuckDB and Polars out.

The package body is in ``msgtrace/_package.py`` (see there and ``msgtrace/_import_hook/_msgtrace_path.py`` for why):
installed wheels load it through an import hook, and this file only serves imports without the hook, such
as a source checkout on ``PYTHONPATH``.
"""

# The msgtrace-sdk wheel ships its own top-level ``msgtrace`` package (``msgtrace/sdk/``, ``msgtrace/version.py``).
# Extending __path__ lets ``import msgtrace.sdk`` find it when the two are installed in different places.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from msgtrace._package import __all__, __getattr__, __version__, open  # noqa: E402, F401, A004
