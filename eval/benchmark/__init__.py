"""eval.benchmark: the forensic harness — datasets, generated splices, metrics and the per-method tables."""
