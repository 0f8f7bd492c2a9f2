"""The installed package is one namespace: ``exiflang`` and nothing else at the top level."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"exiflang": "exiflang", "pipeline": "exiflang/pipeline", "train": "exiflang/train", "eval": "exiflang/eval"}


def _tracked_modules() -> set[str]:
    """Every tracked .py of the four package folders, as its path inside the wheel."""
    out = subprocess.run(
        ["git", "ls-files", *FOLDERS], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    mods = set()
    for f in out:
        if f.endswith(".py"):
            top, _, rest = f.partition("/")
            mods.add(f"{FOLDERS[top]}/{rest}")
    return mods


def _tracked(folder: str) -> list[str]:
    """Tracked files under ``folder`` (paths relative to the repository)."""
    return subprocess.run(
        ["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()


def _build_wheel(tmp: Path) -> Path:
    """The wheel built from a copy of the sources (so no build/ or egg-info lands in the tree)."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in [*FOLDERS, "pyproject.toml", "README.md"]:
        p = REPO / name
        (
            shutil.copytree(p, src / name, ignore=ignore)
            if p.is_dir()
            else (src.mkdir(exist_ok=True), shutil.copy2(p, src / name))
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next((tmp / "dist").glob("exiflang-*.whl"))


def test_wheel_holds_one_namespace_with_every_module(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"exiflang", wheel.name.split("-py")[0] + ".dist-info"}, tops
    assert {n for n in names if n.endswith(".py")} == _tracked_modules()
    # The analyst's page (exiflang serve) ships its assets as package data: no CDN at run time.
    assets = {f for f in _tracked("exiflang/serve/static") if not f.endswith(".py")}
    assert assets and assets <= set(names), assets - set(names)

    # A clean interpreter with only the wheel on its path: the namespace imports, the old
    # top-level names do not (they would collide with users' own train.py / eval / pipeline).
    env_dir, site = tmp_path / "venv", tmp_path / "site"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import importlib, sys\n"
        "import exiflang, exiflang.pipeline, exiflang.train, exiflang.eval\n"
        "assert exiflang.pipeline.__file__.startswith(sys.argv[1]), exiflang.pipeline.__file__\n"
        "for name in ('pipeline', 'train', 'eval'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'import {name} worked')\n"
        "print('ok')\n"
    )
    py = env_dir / "bin" / "python"
    r = subprocess.run(
        [str(py), "-c", code, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
