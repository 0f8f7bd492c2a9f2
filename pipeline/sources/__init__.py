"""pipeline.sources: what the job reads (photo folders, URL lists, Parquet, YFCC100M files) as a stream of rows."""
