"""Tests of the training stage: model, tokenizer, losses, the authors' checkpoint converter."""
