"""eval.probes: linear probes on frozen features (the paper's radial lens distortion probe)."""
