"""Where spans live on disk: the directory layout, the Parquet writer, the writer lock and start-up checks."""
