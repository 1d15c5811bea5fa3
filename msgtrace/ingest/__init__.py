"""The ingest side: OTLP bytes → decode (pure) → WAL (durable before the 200) → buffer → Parquet."""
