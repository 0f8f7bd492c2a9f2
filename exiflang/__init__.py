"""exiflang: the console script that dispatches to the pipeline, train and eval entry points."""
