"""The package's import graph: no cycles (in-function imports included) and layers pipeline -> train -> eval."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "exiflang": REPO / "exiflang",
    "exiflang.pipeline": REPO / "pipeline",
    "exiflang.train": REPO / "train",
    "exiflang.eval": REPO / "eval",
}
# Lower layers never import higher ones.  exiflang's own top-level modules sit beside the layers:
# errors and command (the CLI layer) are leaves every layer may use; cli, demo, api, commands/ and
# serve/ are front doors that use every layer and that no layer uses.
LAYER = {"exiflang.pipeline": 0, "exiflang.train": 1, "exiflang.eval": 2}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for prefix, folder in FOLDERS.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if prefix == "exiflang" and parts and parts[0] in ("pipeline", "train", "eval"):
                continue
            found[".".join([prefix, *parts])] = f
    return found


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (module level or not)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "exiflang":
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, m, set(mods)) for m, p in mods.items()}


def layer(mod: str) -> int | None:
    for prefix, n in LAYER.items():
        if mod == prefix or mod.startswith(prefix + "."):
            return n
    return None


def test_no_import_cycles() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_layers_never_import_upwards() -> None:
    bad = [
        (m, t)
        for m, ts in graph().items()
        for t in ts
        if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)
    ]
    assert not bad, bad
    # and the lower layers never reach the front ends (cli, demo, the API, the commands that use
    # it, the service): those sit above eval and import it.
    front = {"exiflang.cli", "exiflang.demo", "exiflang.demo_eval", "exiflang.__main__", "exiflang.api"}
    front_packages = ("exiflang.commands", "exiflang.serve")
    bad = [
        (m, t)
        for m, ts in graph().items()
        for t in ts
        if layer(m) is not None and (t in front or t.startswith(front_packages))
    ]
    assert not bad, bad
