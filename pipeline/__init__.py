"""pipeline: sources -> download -> EXIF parse -> shard writer -> tag selection (Ray only at the edge)."""
