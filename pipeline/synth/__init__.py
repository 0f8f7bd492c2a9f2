"""pipeline.synth: the synthetic camera corpus — scenes, simulated cameras, their EXIF, written as real JPEGs."""
