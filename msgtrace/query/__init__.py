"""The query side: DuckDB over the Parquet store (and the live buffer), through the views in ``sql/``."""
