"""eval.embed: photos and shards -> patch and text embeddings on disk (one process or torchrun ranks)."""
