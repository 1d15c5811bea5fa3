"""msgtrace: a columnar, analytics-first trace store for LLM agents and workflows.

OTLP spans in (``msgtrace ingest``), day-partitioned Parquet on disk, DuckDB and Polars out.
"""

# The msgtrace-sdk wheel ships its own top-level ``msgtrace`` package (``msgtrace/sdk/``, ``msgtrace/version.py``).
# Extending __path__ lets ``import msgtrace.sdk`` find it when the two are installed in different places.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from msgtrace._version import __version__  # noqa: E402

__all__ = ["__version__", "open", "Store"]


def open(data_dir=None, **options):  # type: ignore[no-untyped-def]  # noqa: A001
    """Open a store for querying: ``msgtrace.open("~/.local/share/msgtrace").traces()``. No server needed.

    Returns a :class:`msgtrace.query.store.Store`; ``data_dir`` defaults to ``$MSGTRACE_DATA_DIR`` or
    ``~/.local/share/msgtrace``.
    """
    from msgtrace.query.store import Store

    return Store(data_dir, **options)


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name == "Store":  # imported lazily: `import msgtrace` stays light for the CLI and msgtrace-sdk users
        from msgtrace.query.store import Store

        return Store
    raise AttributeError(name)
