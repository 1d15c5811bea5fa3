"""The query engine: the one gateway through which the server, the CLI and the Python API run SQL.

It owns a DuckDB database holding the views and macros of ``sql/*.sql`` (the single source of query truth). Each
query gets its own cursor, on which ``spans_source`` — the relation every view reads — is bound to a snapshot: the
Parquet parts that exist when the query starts, less those compaction has retired (an explicit list, so a flush or
a compaction publishing a part mid-query changes nothing) plus, inside the server, the spans still in memory (``live``), so a span is queryable as soon as its 200
was sent. Duplicates between the two (a flush publishing while the query starts) collapse in the ``spans`` view.
A query about one trace's spans binds only the parts holding it, and of a compacted part only the trace's rows,
read here with pyarrow from the one row group its statistics and Bloom filter leave
(:meth:`QueryEngine._trace_rows`).

Every query runs with a time limit (the cursor is interrupted: :class:`QueryTimeout`) and a row cap (the result says
``truncated``). Values are always bound as parameters; identifiers and paths go through :func:`quote_literal` /
:func:`quote_ident`, never raw into SQL.

User SQL from the network goes through :meth:`QueryEngine.run_sandboxed` instead: exactly one statement whose type
is SELECT (DuckDB's own parser decides), run on a fresh, throw-away DuckDB database that holds the views, the
snapshot and nothing else, with external access off (only the snapshot's Parquet files are readable), no extension
install or load, and the configuration locked (:data:`SANDBOX_SETTINGS`).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgtrace.errors import MsgtraceError
from msgtrace.schema import SPAN_SCHEMA
from msgtrace.storage import bloom
from msgtrace.storage.layout import COMPACTED_PREFIX, StoreLayout, day_to_date, part_day
from msgtrace.storage.retired import visible_parts

SOURCE_SCHEMA = SPAN_SCHEMA.append(pa.field("date", pa.date32()))
LiveSource = Callable[[], pa.Table | None]


def sql_dir() -> Path:
    """``sql/`` of a source checkout, or the copy packaged inside an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "10_spans.sql").exists():
            return candidate
    raise FileNotFoundError("msgtrace's sql/ directory is missing from this installation")


def view_statements() -> list[str]:
    """The view and macro definitions, in file order, without the shell-only sources (``00_``, ``99_``)."""
    return [p.read_text() for p in sorted(sql_dir().glob("*.sql")) if not p.name.startswith(("00_", "99_"))]


def shell_init_sql(data_dir: Path) -> str:
    """Everything a plain ``duckdb`` shell needs to see the store through the views: ``00_source.sql``, the views,
    then ``99_shell.sql``, less the parts that would read files that do not exist (a glob over none fails)."""
    root = data_dir.expanduser().resolve()
    layout = StoreLayout(root)
    sql = f"SET VARIABLE msgtrace_data_dir = {quote_literal(str(root))};\n"
    source = (sql_dir() / "00_source.sql").read_text()
    if not layout.retired_path.exists():  # a store nothing has compacted yet: no list to read
        sql += "CREATE OR REPLACE VIEW retired_parts AS SELECT CAST(NULL AS VARCHAR) AS filename WHERE false;\n"
        source = source[source.index("CREATE OR REPLACE VIEW part_rows"):]
    sql += source + "\n" + "\n".join(view_statements()) + "\n"
    shell = (sql_dir() / "99_shell.sql").read_text()
    if not list(layout.summaries_dir.glob("*/*.parquet")):
        shell = shell[shell.index("CREATE OR REPLACE VIEW fresh_source"):]
    sql += shell
    tombstones = layout.delete_files()
    if tombstones:  # the tombstones that exist now
        sql += f"\nCREATE OR REPLACE VIEW deleted_traces AS SELECT trace_id FROM read_parquet([{_listing([str(p) for p in tombstones])}]);\n"
    return sql


_TRACE_VIEWS = re.compile(r"\b(traces|stats|trace_rows|trace_summaries|redo_\w+)\b", re.IGNORECASE)


_COMMENT = re.compile(r"--[^\n]*")


def reads_traces(sql: str) -> bool:
    """Whether ``sql`` may read the ``traces`` view (directly or through ``stats``); when unsure, True."""
    return _TRACE_VIEWS.search(_COMMENT.sub("", sql)) is not None


def _listing(files: list[str]) -> str:
    return ", ".join(quote_literal(f) for f in files)


@functools.cache
def named_query(name: str) -> str:
    return (sql_dir() / "queries" / f"{name}.sql").read_text()


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class QueryError(MsgtraceError):
    """The SQL failed (bad user SQL, or a bug): 400 for user SQL."""

    status = 400


class QueryTimeout(MsgtraceError):
    """The query ran past its time limit and was interrupted."""

    status = 504


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    truncated: bool
    elapsed_ms: float

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


# Applied in this order to every sandbox database once its views and snapshot exist; the lock comes last. Before
# them, ``allowed_paths`` is set to the snapshot's exact Parquet files (not the spans/ directory: a write into an
# allowed directory would be allowed too), and ``temp_directory`` is emptied (DuckDB allows its temp directory,
# ``<cwd>/.tmp`` by default, even with external access off; without one, an over-large query fails instead of
# spilling). Arrow tables registered from Python (``live_spans``) stay readable: registration is explicit, unlike
# replacement scans of Python variables, which are off.
SANDBOX_SETTINGS = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET python_enable_replacements = false",
    "SET lock_configuration = true",
)


class _SharedRows:
    """The flagged (shared) rows of a set of summary files, read once per set (see ``shared_summaries`` in
    ``sql/25_traces.sql``). Summary files are immutable and each compaction pass writes new ones, so the exact
    list of files is the key: a snapshot never sees rows of files it did not bind. Only the latest set is kept
    (a few hundred rows at 10M spans: traces spread over several compacted parts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, ...] = ()
        self._rows: pa.Table | None = None

    def of(self, summaries: list[str], cursor: Callable[[], Any]) -> pa.Table:
        key = tuple(summaries)
        with self._lock:
            if self._rows is None or key != self._key:
                with cursor() as cur:
                    rows = cur.sql(f"SELECT * FROM read_parquet([{_listing(summaries)}]) WHERE shared")
                    self._rows, self._key = rows.to_arrow_table(), key
            return self._rows


class _FileStatistics:
    """A value per Parquet file read from its footer, once per file: the files it is asked about are
    immutable (summary files and compacted parts; every compaction pass writes new ones under new names). ``read``
    gets the files not seen yet and returns their values; a file it leaves out gets None. Only the files of the
    latest call are kept, so the cache never outgrows the store."""

    def __init__(self, read: Callable[[list[str]], dict[str, Any]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}

    def of(self, files: list[str]) -> dict[str, Any]:
        with self._lock:
            unknown = [f for f in files if f not in self._values]
            found = self._read(unknown) if unknown else {}
            self._values = {f: self._values[f] if f in self._values else found.get(f) for f in files}
            return self._values


@dataclass
class NewestFirst:
    """Bind the stored trace rows of only the ``files`` summary files with the newest traces; after binding,
    ``left_out`` is the largest trace start in the files left out (None when none was)."""

    files: int
    left_out: dt.datetime | None = None

    def narrow(self, summaries: list[str], newest: dict[str, dt.datetime | None]) -> list[str]:
        """``newest``: the largest ``start_time`` of each summary file; one without statistics counts as holding
        the newest traces."""
        ordered = sorted(((f, newest[f] or dt.datetime.max) for f in summaries), key=lambda pair: pair[1],
                         reverse=True)
        if len(ordered) <= self.files:
            return summaries
        self.left_out = ordered[self.files][1]
        return [f for f, _ in ordered[:self.files]]


def _leaf(metadata: pq.FileMetaData, column: str) -> int:
    """The index of the top-level scalar column ``column`` among the file's leaf columns (StopIteration: none)."""
    return next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path == column)


def _ranges(metadata: pq.FileMetaData, column: str) -> list[tuple[Any, Any] | None]:
    """The ``(min, max)`` of the top-level column ``column`` in each row group, by its statistics (None where it has
    none). Plain values: a Statistics object must not outlive the metadata it came from."""
    leaf = _leaf(metadata, column)
    out: list[tuple[Any, Any] | None] = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(leaf).statistics
        out.append((stats.min, stats.max) if stats is not None and stats.has_min_max else None)
    return out


def _largest(path: str, column: str) -> Any:
    """The largest value of ``column`` in a Parquet file by its row groups' statistics; None when not known (the
    footer unreadable, or a row group without statistics)."""
    try:
        ranges = _ranges(pq.read_metadata(path), column)
    except (OSError, StopIteration, pa.ArrowException):
        return None
    return None if not ranges or None in ranges else max(high for _, high in ranges)


@dataclass(frozen=True)
class _Footer:
    """A compacted part's parsed Parquet footer; for each of its row groups, the ``[min, max]`` trace id and where
    the trace-id Bloom filter lies (``(offset, length)``), each None when the row group has none."""

    metadata: pq.FileMetaData
    ranges: list[tuple[str, str] | None]
    blooms: list[tuple[int, int] | None]

    @classmethod
    def read(cls, path: str) -> _Footer | None:
        """None when the footer cannot be read (DuckDB then probes the part, and says why it cannot)."""
        try:
            metadata = pq.read_metadata(path)
            leaf = _leaf(metadata, "trace_id")
            ranges = _ranges(metadata, "trace_id")
        except (OSError, StopIteration, pa.ArrowException):
            return None
        blooms: list[tuple[int, int] | None] = []
        for group in range(metadata.num_row_groups):
            chunk = metadata.row_group(group).column(leaf)
            offset, length = chunk.bloom_filter_offset, chunk.bloom_filter_length
            blooms.append((offset, length) if offset is not None and length else None)
        return cls(metadata, ranges, blooms)

    def groups(self, trace_id: str) -> list[int]:
        """The row groups whose ranges may hold ``trace_id`` (validated lower-case hex, as stored)."""
        return [g for g, r in enumerate(self.ranges) if r is None or r[0] <= trace_id <= r[1]]

    def filtered(self, path: Path, groups: list[int], trace_id: str) -> list[int]:
        """Of ``groups``, those whose Bloom filter may hold ``trace_id`` (or that have none)."""
        value, kept = trace_id.encode(), []
        with open(path, "rb") as file:
            for group in groups:
                where = self.blooms[group]
                bits = bloom.bitset(os.pread(file.fileno(), where[1], where[0])) if where is not None else None
                if bits is None or bloom.may_contain(bits, value):
                    kept.append(group)
        return kept


@dataclass
class _Holders:
    """Where one trace's spans are: ``probed``, the parts DuckDB found holding them (flushed parts, and compacted
    ones whose footer could not be read); ``groups``, the compacted parts whose row-group ranges and Bloom filters say
    they may hold them, with their footers and those row groups (about 1 % of them hold none: a Bloom filter's false
    positive)."""

    probed: list[Path]
    groups: dict[Path, tuple[_Footer, list[int]]]

    def parts(self, order: list[Path]) -> list[Path]:
        return [p for p in order if p in self.groups or p in self.probed]


def check_select(sql: str) -> None:
    """Refuse (:class:`QueryError`) anything but exactly one SELECT statement, as DuckDB's parser sees it."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryError(f"exactly one SQL statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT statements are allowed, not {kind.name}")


_ENGINE_NUMBERS = itertools.count()  # names each engine's spill directory


class QueryEngine:
    def __init__(self, data_dir: Path | str, *, live: LiveSource | None = None, timeout: float = 10.0,
                 max_rows: int = 10_000, threads: int | None = None, memory_limit: str | None = None,
                 sandbox_memory_bytes: int | None = None) -> None:
        self.layout = StoreLayout(Path(data_dir).expanduser())
        self.timeout = timeout
        self.max_rows = max_rows
        self._live = live
        self._config: dict[str, Any] = {"threads": threads} if threads else {}
        if memory_limit:
            self._config["memory_limit"] = memory_limit
        # Where a query past the memory limit spills: DuckDB's default is ``.tmp`` in the working directory, which
        # left GBs of spill files in whatever directory a server or a compaction was started from when it was killed.
        # DuckDB creates the directory when it first spills and removes what it wrote when the database closes.
        self._config["temp_directory"] = str(Path(tempfile.gettempdir()) / f"msgtrace-duckdb-{os.getpid()}-"
                                             f"{next(_ENGINE_NUMBERS)}")
        self.sandbox_memory_bytes = sandbox_memory_bytes  # each sandbox database's memory_limit; None: DuckDB's
        self._shared = _SharedRows()
        # The largest trace start of each summary file, for the newest-first trace list (run_newest_first).
        self._newest = _FileStatistics(lambda files: {f: _largest(f, "start_time") for f in files})
        # Each compacted part's footer (_Footer): the [min, max] trace id and the Bloom filter of each row group. A
        # compacted day holds disjoint, sorted trace-id ranges, so the ranges rule out all but about one part a day
        # for a trace (at 10M spans over 30 days, 31 of 91 parts are left: finding the trace's parts 15.7 -> 6.3 ms),
        # the Bloom filter of that part's one row group nearly all of the rest, and the footer lets the trace's rows
        # be read from that row group alone (_trace_rows). Flushed parts (one row group spanning nearly every id,
        # rewritten by a WAL replay) are always probed by DuckDB.
        self._footers = _FileStatistics(lambda files: {f: _Footer.read(f) for f in files})
        self._db = duckdb.connect(config=self._config)
        # Parse each part's footer once, not per query (lookups over 268 parts: 110 -> 77 ms, benchmarks/README).
        # DuckDB checks the file's modification time, so a part rewritten by a replay is read afresh.
        self._db.execute("SET GLOBAL parquet_metadata_cache = true")
        self._empty = SOURCE_SCHEMA.empty_table()
        # Views are bound when created, so a typed, empty spans_source must exist first; each cursor then
        # shadows it with a temp view over its own snapshot (temp objects win name resolution).
        self._db.register("empty_source", self._empty)
        self._db.execute("CREATE TABLE spans_source_schema AS SELECT * FROM empty_source")
        self._db.unregister("empty_source")
        self._db.execute("CREATE VIEW spans_source AS SELECT * FROM spans_source_schema")
        for statement in view_statements():
            self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def unbound_cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor with the views and macros but no snapshot of the store (its sources are empty), closed on exit:
        for SQL over relations the caller registers itself, which need not pay for listing the store's parts."""
        cur = self._db.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def cursor(self, *, traces: bool = True, trace_id: str | None = None,
               window: NewestFirst | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor whose sources are a snapshot of the store taken now, closed on exit (``traces``,
        ``trace_id`` and ``window``: see :meth:`snapshot`)."""
        cur = self.snapshot(traces=traces, trace_id=trace_id, window=window)
        try:
            yield cur
        finally:
            cur.close()

    def snapshot(self, *, traces: bool = True, trace_id: str | None = None,
                 window: NewestFirst | None = None) -> duckdb.DuckDBPyConnection:
        """A cursor bound to the store as it is now; the caller closes it. ``traces=False`` skips finding the
        compacted parts the ``traces`` view may need to recompute (a query that does not read it is faster).
        ``trace_id`` (validated lower-case hex) binds only the parts holding that trace: for queries about that one
        trace, which then open one or two files instead of every part of every day. ``window`` binds only the
        stored trace rows of the files with the newest traces (see :meth:`run_newest_first`)."""
        cur = self._db.cursor()
        try:
            self._bind_source(cur, traces=traces, trace_id=trace_id, window=window)
        except BaseException:
            cur.close()
            raise
        return cur

    def _bind_source(self, cur: duckdb.DuckDBPyConnection, *, traces: bool = True,
                     trace_id: str | None = None, window: NewestFirst | None = None) -> list[str]:
        """Point the sources of ``cur`` (``spans_source``, ``fresh_source``, ``trace_summaries``, ``redo_source``,
        ``deleted_traces``; see ``sql/25_traces.sql``) at the snapshot; returns the files they read (the sandbox
        allows exactly these, so a file bound here but not returned fails closed there: a permission error)."""
        # The live buffer first, the files second: a flush publishes its parts before it lets go of the buffered
        # spans, so whatever left the buffer before it was read is in a part the glob then finds. (The other order
        # loses a flush that lands between the two reads.)
        live = self._live() if self._live is not None else None
        parts = visible_parts(self.layout)
        # picked: rows read here instead of by DuckDB (one trace's spans or tree), from `sources` compacted parts
        scanned, picked, sources = parts, None, 0
        if trace_id is not None and parts:
            holders = self._holders(parts, trace_id)
            parts = scanned = holders.parts(parts)
            if not traces and holders.groups:
                picked, sources, unread = self._trace_rows(holders.groups, trace_id)
                scanned = [p for p in parts if p in holders.probed or p in unread]
        has_live = live is not None and live.num_rows > 0
        if has_live:
            cur.register("live_spans", live)

        def union(files: list[str]) -> str | None:
            """The files, the rows read by ``_trace_rows`` and the spans still in memory, as one relation (None when
            there is none of them)."""
            selects = []
            if files:
                # No union_by_name: every part has schema version 1, and unifying schemas reads each file's schema
                # on every query (+80 ms over 268 parts). A schema version 2 must bring it back for mixed stores.
                selects.append(f"SELECT * FROM read_parquet([{_listing(files)}], hive_partitioning = true)")
            if picked is not None:  # (only for one trace's spans or tree, which use no other union)
                selects.append("SELECT * FROM trace_rows")
            if has_live:
                selects.append("SELECT * FROM live_spans")
            return " UNION ALL BY NAME ".join(selects) if selects else None

        only_picked = picked is not None and not scanned and not has_live
        if only_picked:
            cur.register("spans_source", picked)  # (the whole source: no view over it needed, ~0.6 ms)
        else:
            if picked is not None:
                cur.register("trace_rows", picked)
            if (everything := union([str(p) for p in scanned])) is not None:
                cur.execute("CREATE OR REPLACE TEMP VIEW spans_source AS " + everything)
        tombstones = [str(p) for p in self.layout.delete_files()]
        if tombstones:
            cur.execute(f"CREATE OR REPLACE TEMP VIEW deleted_traces AS SELECT trace_id FROM read_parquet("
                        f"[{_listing(tombstones)}])")
        if only_picked and sources <= 1:
            # All of the trace's rows come from one compacted part, which holds one row per span (compaction
            # keeps the row the spans view's window would): the window is left out. On a trace's ~10 rows it
            # costs ~5 ms, a fixed cost per column it carries (benchmarks/README.md).
            cur.execute("CREATE OR REPLACE TEMP VIEW spans AS SELECT * FROM span_rows('spans_source')")
        if trace_id is not None and not traces:
            # One trace's spans or tree: the views that need no trace rows are bound; the others keep their
            # catalog defaults (binding them cost ~5 ms of a ~40 ms lookup at 1M spans, benchmarks/README.md).
            return [str(p) for p in parts] + tombstones
        summarized = {p: s for p in parts if (s := self.layout.summary_path(p)) is not None and s.exists()}
        fresh = [str(p) for p in parts if p not in summarized]
        if (recent := union(fresh)) is not None:
            cur.execute("CREATE OR REPLACE TEMP VIEW fresh_source AS " + recent)
        summaries = [str(s) for s in summarized.values()]
        if summaries:
            bound = summaries if window is None else window.narrow(summaries, self._newest.of(summaries))
            cur.execute("CREATE OR REPLACE TEMP VIEW trace_summaries AS "
                        f"SELECT * FROM read_parquet([{_listing(bound)}])")
            if traces and trace_id is None:  # (one trace's query reads its one or two files anyway)
                cur.register("shared_rows", self._shared.of(summaries, self.unbound_cursor))
                cur.execute("CREATE OR REPLACE TEMP VIEW shared_summaries AS SELECT * FROM shared_rows")
        redo = fresh
        if traces and summaries and (fresh or has_live):
            # The compacted parts holding spans of traces that also have fresh spans (usually few).
            names = [r[0] for r in cur.execute(  # over every summary file, whatever the window
                f"SELECT DISTINCT part FROM read_parquet([{_listing(summaries)}])"
                " WHERE trace_id IN (SELECT trace_id FROM fresh_source)"
            ).fetchall()]
            redo = fresh + [str(self.layout.root / name) for name in names]
        if (source := union(redo)) is not None:
            cur.execute("CREATE OR REPLACE TEMP VIEW redo_source AS " + source)
        else:
            cur.execute("CREATE OR REPLACE TEMP VIEW redo_source AS SELECT * FROM spans_source WHERE false")
        return [str(p) for p in parts] + summaries + tombstones

    def _candidates(self, parts: list[Path], trace_id: str) -> dict[Path, _Footer | None]:
        """The parts that may hold ``trace_id`` (validated lower-case hex, as stored) by their row groups' ranges,
        with their footers (None for a flushed part, or a compacted one whose footer could not be read)."""
        footers = self._footers.of([str(p) for p in parts if p.name.startswith(COMPACTED_PREFIX)])
        return {p: footer for p in parts if (footer := footers.get(str(p))) is None or footer.groups(trace_id)}

    def _holders(self, parts: list[Path], trace_id: str) -> _Holders:
        """The parts holding spans of ``trace_id``. Of the parts its row-group ranges leave (:meth:`_candidates`),
        the compacted ones are checked against the Bloom filters of those row groups here, in Python (~10 µs a
        row group, where asking DuckDB cost ~0.3 ms a file: 2.8 ms of a 1M-span lookup); the others (flushed parts,
        one row group spanning nearly every id and no Bloom filter) are probed by DuckDB, which reads only their
        ``trace_id`` column."""
        groups: dict[Path, tuple[_Footer, list[int]]] = {}
        probe = []
        for part, footer in self._candidates(parts, trace_id).items():
            try:
                kept = None if footer is None else footer.filtered(part, footer.groups(trace_id), trace_id)
            except OSError:  # (gone or unreadable: DuckDB says which)
                kept = None
            if footer is None or kept is None:
                probe.append(part)
            elif kept:
                groups[part] = (footer, kept)
        probed = []
        if probe:
            with self.unbound_cursor() as cur:
                hits = {r[0] for r in cur.execute(
                    f"SELECT DISTINCT filename FROM read_parquet([{_listing([str(p) for p in probe])}], "
                    "filename = true) WHERE trace_id = $trace_id", {"trace_id": trace_id}).fetchall()}
            probed = [p for p in probe if str(p) in hits]
        return _Holders(probed, groups)

    def _trace_rows(self, groups: dict[Path, tuple[_Footer, list[int]]], trace_id: str
                    ) -> tuple[pa.Table, int, list[Path]]:
        """The rows of ``trace_id`` in these row groups of compacted parts (each with its footer), read with
        pyarrow and shaped as ``spans_source`` rows (the ``date`` partition column included); how many parts they
        came from; and the parts pyarrow could not read (a damaged file: DuckDB reads those, and fails or answers
        as it would have).

        DuckDB decodes a row group at a fixed cost per leaf column (81 of them, most in the attribute maps): ~20 ms
        for the trace's 8,192-row group at 1M spans, the bulk of a lookup. pyarrow decodes the same rows in about
        half that, and in proportion to their number, so with 2,048-row groups the trace's rows take ~5 ms
        (benchmarks/README.md). Only compacted parts are read this way: they are immutable (never rewritten under
        their name) and sorted, so one row group holds the trace, two at a boundary."""
        tables, unread = [], []
        for part, (footer, wanted) in groups.items():
            day = part_day(part)
            try:
                with pq.ParquetFile(part, metadata=footer.metadata) as file:
                    rows = file.read_row_groups(wanted, use_threads=True)
            except (OSError, pa.ArrowException):
                unread.append(part)
                continue
            ids = rows["trace_id"]
            first, count = pc.index(ids, trace_id).as_py(), pc.sum(pc.equal(ids, trace_id)).as_py() or 0
            # The part is sorted by trace id, so the trace's rows are one slice, no copy (filtering copies the
            # attribute maps: ~0.4 ms); should a row group not be sorted, filter.
            trace = rows.slice(first, count) if count else rows.slice(0, 0)
            if count and pc.count_distinct(trace["trace_id"]).as_py() != 1:
                trace = rows.filter(pc.equal(ids, trace_id))
            date = pa.array([None if day is None else day_to_date(day)] * trace.num_rows, pa.date32())
            tables.append(trace.append_column("date", date))
        table = pa.concat_tables(tables) if tables else SOURCE_SCHEMA.empty_table()
        sources = sum(1 for t in tables if t.num_rows)
        return (table if table.schema.equals(SOURCE_SCHEMA) else table.cast(SOURCE_SCHEMA)), sources, unread

    def run(self, sql: str, params: dict[str, Any] | list[Any] | None = None, *, max_rows: int | None = None,
            timeout: float | None = None, trace_id: str | None = None) -> QueryResult:
        """Run one statement; at most ``max_rows`` rows come back (``truncated`` says if there were more).
        With ``trace_id``, the statement sees only the parts holding that trace (see :meth:`snapshot`)."""
        cap = self.max_rows if max_rows is None else max_rows
        started = time.perf_counter()
        with self.cursor(traces=reads_traces(sql), trace_id=trace_id) as cur:
            return self._execute(cur, sql, params, cap, timeout, started)

    def run_newest_first(self, sql: str, params: dict[str, Any] | None, *, limit: int) -> QueryResult:
        """``sql``, a query of the ``traces`` view ordered by ``start_time DESC`` (then anything) with ``LIMIT
        $limit`` (and an offset), run first over the stored trace rows of the few files holding the newest traces,
        then over 4x as many, and so on, until the answer is known to be the whole store's.

        The first page of the trace list read every summary file (91 at 10M spans over 30 days) to keep 50 rows;
        the newest traces are in the last day's few. The narrowed answer is the whole one when the page is full
        and its last row started after every trace of the files left out (their largest ``start_time`` in the
        Parquet statistics): any row those hold sorts after it. The other rows of the view (traces with fresh
        spans, shared traces) are always bound."""
        window = NewestFirst(files=4)
        started = time.perf_counter()  # (elapsed_ms then counts every try)
        while True:
            # The tries share the time limit: each gets what the ones before it left.
            left = self.timeout - (time.perf_counter() - started)
            stopped = QueryTimeout(f"query ran longer than {self.timeout:g} s and was stopped")
            if left <= 0:
                raise stopped
            try:
                with self.cursor(window=window) as cur:
                    result = self._execute(cur, sql, params, limit, left, started)
            except QueryTimeout:
                raise stopped from None
            if window.left_out is None:
                return result
            starts = result.table.column("start_time")
            if result.table.num_rows == limit and starts[limit - 1].as_py() is not None \
                    and starts[limit - 1].as_py() > window.left_out:
                return result
            window = NewestFirst(files=window.files * 4)

    def run_sandboxed(self, sql: str, params: dict[str, Any] | list[Any] | None = None, *,
                      max_rows: int | None = None, timeout: float | None = None) -> QueryResult:
        """Run untrusted SQL: one SELECT, on a sandbox database of its own (see the module docstring), with the
        time limit and a row cap of at most the engine's ``max_rows``. Anything else is a :class:`QueryError`."""
        check_select(sql)
        cap = self.max_rows if max_rows is None else max(0, min(max_rows, self.max_rows))
        started = time.perf_counter()
        db = self.sandbox(traces=reads_traces(sql))
        try:
            return self._execute(db, sql, params, cap, timeout, started, memory_bytes=self.sandbox_memory_bytes)
        finally:
            db.close()

    def sandbox(self, *, traces: bool = True) -> duckdb.DuckDBPyConnection:
        """A new in-memory database with the views over a snapshot taken now, locked down; the caller closes it.

        It holds no data (``spans_source`` is a temp view over the snapshot's files, the live Arrow table or an
        empty Arrow table; the only table is the empty shape of ``trace_summaries``), so even a data-modifying CTE
        that DuckDB parses as a SELECT has nothing of the store to change."""
        db = duckdb.connect(config=self._config)
        try:
            db.execute("SET GLOBAL parquet_metadata_cache = true")
            db.register("empty_source", self._empty)
            db.execute("CREATE TEMP VIEW spans_source AS SELECT * FROM empty_source")
            for statement in view_statements():
                db.execute(statement)
            files = self._bind_source(db, traces=traces)
            db.execute(f"SET allowed_paths = [{', '.join(quote_literal(p) for p in files)}]")
            db.execute("SET temp_directory = ''")
            if self.sandbox_memory_bytes:  # with no temp directory, a query past it fails instead of spilling
                db.execute(f"SET memory_limit = '{int(self.sandbox_memory_bytes)}B'")
            for setting in SANDBOX_SETTINGS:
                db.execute(setting)
        except BaseException:
            db.close()
            raise
        return db

    def _execute(self, cur: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | list[Any] | None,
                 cap: int, timeout: float | None, started: float, *, memory_bytes: int | None = None
                 ) -> QueryResult:
        """Run on ``cur`` with the time limit and row cap; ``memory_bytes``: the database's memory limit, if set,
        named when a query runs out of it."""
        timer = threading.Timer(self.timeout if timeout is None else timeout, cur.interrupt)
        timer.start()
        try:
            relation = cur.sql(sql, params=params)
            if relation is None:
                raise QueryError("the SQL returns no rows (it is empty, or not a query)")
            reader = relation.to_arrow_reader(min(cap + 1, 65_536) or 1)
            batches, rows = [], 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                if rows > cap:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except (duckdb.Error, OSError) as exc:
            # An interrupt while Arrow batches stream surfaces as an OSError rather than an InterruptException.
            if isinstance(exc, duckdb.InterruptException) or (timer.finished.is_set() and "nterrupt" in str(exc)):
                raise QueryTimeout(f"query ran longer than {timer.interval:g} s and was stopped") from None
            if isinstance(exc, OSError):
                raise
            if isinstance(exc, duckdb.OutOfMemoryException) and memory_bytes:
                raise QueryError(f"the query needs more memory than the {memory_bytes / 2**20:g} MiB a query may "
                                 f"use ({str(exc).splitlines()[0]})") from None
            raise QueryError(str(exc).splitlines()[0]) from None
        finally:
            timer.cancel()
        return QueryResult(table.slice(0, cap), rows > cap, (time.perf_counter() - started) * 1000)
