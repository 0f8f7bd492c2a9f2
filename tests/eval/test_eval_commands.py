"""The evaluation commands on the one CLI layer: ``--help`` answers without the heavy libraries, and
the constants the light command modules repeat agree with their engines'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("embed", "index", "eval-tags", "make-splices", "benchmark", "eval-check-exif")
HEAVY = ("torch", "faiss", "transformers", "ray", "sklearn")


@pytest.mark.parametrize("name", COMMANDS)
def test_help_imports_no_heavy_library(name: str) -> None:
    code = (
        "import contextlib, io, sys\n"
        "from exiflang import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    rc = cli.main([{name!r}, '--help'])\n"
        "assert rc == 0 and 'usage:' in out.getvalue(), (rc, out.getvalue())\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "", f"`exiflang {name} --help` imported {res.stdout.strip()}"


def test_index_command_offers_the_engines_kinds() -> None:
    from exiflang.eval.index.build import KINDS
    from exiflang.eval.index.command import KINDS as COMMAND_KINDS

    assert COMMAND_KINDS == KINDS
