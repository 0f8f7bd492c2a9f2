"""`exiflang serve`: the HTTP service and the analyst's page over the Python API (exiflang.api).

Modules: :mod:`~exiflang.serve.gate` (bounded concurrency, queue and deadline),
:mod:`~exiflang.serve.uploads` (reading one capped upload into memory),
:mod:`~exiflang.serve.app` (the FastAPI application: endpoints, errors, the page's assets),
:mod:`~exiflang.serve.main` (the command: options, the loopback/token rule, uvicorn).
The page's HTML/CSS/JS live in ``static/`` and ship inside the package (no CDN, works offline).
"""
