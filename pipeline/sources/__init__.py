"""pipeline.sources: what the job reads — photo folders, URL lists, Parquet shards, the YFCC100M files — as a stream of source rows."""
