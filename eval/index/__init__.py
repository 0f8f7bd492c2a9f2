"""eval.index: FAISS indexes over embeddings, their tuning, and nearest-neighbour metadata lookup with votes."""
