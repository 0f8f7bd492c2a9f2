"""The commands that answer about photos: thin front-ends over the Python API (exiflang.api).

Each module declares its arguments and runs through :mod:`exiflang.api` (``exiflang.load`` ->
``model.detect`` / ``model.calibrate`` / ``model.lookup`` / ``model.check_exif``), so a command, a script and ``exiflang
serve`` compute the same results; what a command writes (npz, PNG, ``results.jsonl``, tables) is
the engine's, in :mod:`exiflang.eval`.  Top-level imports stay light: ``--help`` never imports
torch or faiss.
"""
