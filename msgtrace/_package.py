"""msgtrace: a columnar, analytics-first trace store for LLM agents and workflows.

OTLP spans in (``msgtrace ingest``), day-partitioned Parquet on disk, DuckDB and Polars out.

This is the real body of the ``msgtrace`` package. It lives here rather than in ``__init__.py`` because the
msgtrace-sdk wheel ships its own ``msgtrace/__init__.py``, which overwrites ours when both are installed
into the same site-packages. The ``_msgtrace_path`` import hook installed with this distribution runs this
file as the package ``msgtrace``; without the hook, ``__init__.py`` re-exports it.
"""

from msgtrace._version import __version__

__all__ = ["__version__", "open", "Store"]  # noqa: F822  (Store: module __getattr__)


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
