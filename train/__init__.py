"""train: streaming loader -> model (image + text encoders) -> loss -> engine -> checkpoints."""
