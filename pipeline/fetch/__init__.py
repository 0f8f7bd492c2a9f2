"""pipeline.fetch: one photo's bytes over HTTP, politely (job-wide host limits, opt-outs) and within one deadline."""
