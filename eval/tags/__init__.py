"""eval.tags: predicting EXIF tag values from pixels — classes, k-NN / zero-shot / linear-probe scores, report."""
