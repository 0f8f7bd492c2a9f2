"""eval: embeddings, FAISS lookup, tag prediction and zero-shot splice detection."""
