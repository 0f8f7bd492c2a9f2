"""pipeline.shards: one shard's work and files — sample checks, tar + Parquet + stats, dedup, tag selection."""
