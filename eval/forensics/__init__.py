"""eval.forensics: zero-shot splice detection and localization — patch consistency, mean shift, ncuts, overlays."""
