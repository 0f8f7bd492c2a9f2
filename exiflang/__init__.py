"""exiflang: camera-aware image representations learned from EXIF as language (one namespace).

Subpackages: :mod:`exiflang.pipeline` (photos -> shards), :mod:`exiflang.train` (shards -> model),
:mod:`exiflang.eval` (model -> embeddings, lookup, splice detection); the console script is
:mod:`exiflang.cli`.  Imports run pipeline -> train -> eval, never back.

Where the code lives: the project keeps ``pipeline/``, ``train/`` and ``eval/`` at the repository
root (its design).  Installed from a wheel, setuptools maps them under ``exiflang/``
(``package-dir`` in pyproject.toml).  Imported from a source checkout (``python
pipeline/build_shards.py`` under ``ray job submit --working-dir .``, ``torchrun train/main.py``,
pytest, an editable install), this package's search path is extended by the repository root
so that ``exiflang.pipeline`` is that same ``pipeline/`` folder.  The root is recognised by the
project's own files, never by a folder name alone, so a foreign ``pipeline`` package next to
an installed exiflang is never adopted.  See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _is_checkout(root: Path) -> bool:
    """True when ``root`` is an exiflang source tree (pyproject naming it + the three folders)."""
    try:
        named = 'name = "exiflang"' in (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return named and all((root / d / "__init__.py").is_file() for d in ("pipeline", "train", "eval"))


if _is_checkout(_ROOT) and str(_ROOT) not in __path__:
    __path__.append(str(_ROOT))  # exiflang.pipeline -> ROOT/pipeline (see the module doc)

# The Python API (exiflang/api.py), imported on first use so that `import exiflang` (and every
# command's --help) stays free of torch.
_API_NAMES = ("load", "load_index", "read_image")


def __getattr__(name: str):
    if name in _API_NAMES:
        from exiflang import api

        return getattr(api, name)
    raise AttributeError(f"module 'exiflang' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API_NAMES])
