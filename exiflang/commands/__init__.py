"""The commands that answer about photos (``detect``, ``calibrate``, ``lookup``): thin front-ends over the Python API.

Each module declares its arguments and runs through :mod:`exiflang.api` (``exiflang.load`` ->
``model.detect`` / ``model.calibrate`` / ``model.lookup``), so a command, a script and ``exiflang
serve`` compute the same results; what a command writes (npz, PNG, ``results.jsonl``, tables) is
the engine's, in :mod:`exiflang.eval`.  Top-level imports stay light: ``--help`` never imports
torch or faiss.
"""
