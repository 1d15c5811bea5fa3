"""msgtrace: a columnar, analytics-first trace store for LLM agents and workflows.

OTLP spans in (``msgtrace ingest``), day-partitioned Parquet on disk, DuckDB and Polars out.
"""

# The msgtrace-sdk wheel ships its own top-level ``msgtrace`` package (``msgtrace/sdk/``, ``msgtrace/version.py``).
# Extending __path__ lets ``import msgtrace.sdk`` find it when the two are installed in different places.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from msgtrace._version import __version__  # noqa: E402

__all__ = ["__version__"]
