"""pipeline.shards: one shard's work and files — sample checks, the tar + Parquet + stats writer, dedup and tag selection."""
