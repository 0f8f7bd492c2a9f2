"""The commands README.md and the stage pages show exist, and every option they pass is one their parser has.

A fast companion of ``docs/readme_walkthrough.sh`` (which runs the commands, ~15 minutes): this
reads each bash block of the pages, finds the project's commands in it (``exiflang CMD``,
``python pipeline/build_shards.py``, ``torchrun ... train/main.py``, ``python -m MODULE``,
``python benchmarks/X.py``) and checks each ``--option`` against that command's ``--help``.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from exiflang import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/pipeline.md",
    "docs/training.md",
    "docs/evaluation.md",
    "docs/forensics.md",
    "docs/full-scale.md",
    "docs/embedding.md",
]
SCRIPTS = {"pipeline/build_shards.py": "exiflang.pipeline.build_shards", "train/main.py": "exiflang.train.main"}


def bash_lines(page: Path) -> list[str]:
    """The logical lines (continuations joined, comments cut) of a page's ```bash blocks."""
    out, block = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```bash" and block is None else None
            continue
        if block is not None:
            out.append(line)
    text = re.sub(r"\\\n\s*", " ", "\n".join(out))
    return [re.sub(r"\s+#.*$", "", ln).strip() for ln in text.splitlines() if ln.strip()]


def commands(line: str) -> list[tuple[str, list[str]]]:
    """``(target, argv)`` for each project command in one shell line; target names a parser."""
    found = []
    for part in re.split(r"&&|;|\s\|\s", line):  # not the | of `a|b` choices
        words = shlex.split(part.replace("[", " ").replace("]", " "), posix=True)
        for i, w in enumerate(words):
            if w == "exiflang" and i + 1 < len(words) and words[i + 1] in cli.COMMANDS:
                found.append((f"exiflang {words[i + 1]}", words[i + 2 :]))
                break
            if w in SCRIPTS or (w.endswith(".py") and w.startswith("benchmarks/")):
                found.append((w, words[i + 1 :]))
                break
            if w == "-m" and i + 1 < len(words) and words[i + 1].startswith("exiflang"):
                if words[i + 1] == "exiflang" and i + 2 < len(words):
                    found.append((f"exiflang {words[i + 2]}", words[i + 3 :]))
                else:
                    found.append((f"-m {words[i + 1]}", words[i + 2 :]))
                break
    return found


def help_text(target: str) -> str:
    """The ``--help`` output of a command, produced in this process."""
    buf = io.StringIO()
    argv = sys.argv
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            if target.startswith("exiflang "):
                cli.main([target.split()[1], "--help"])
            elif target.startswith("-m "):
                sys.argv = [target[3:], "--help"]
                runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [str(REPO / target), "--help"]
                runpy.run_path(str(REPO / target), run_name="__main__")
        except SystemExit:
            pass
        finally:
            sys.argv = argv
    return buf.getvalue()


def documented() -> dict[str, set[str]]:
    """Every documented command -> the options the pages pass to it."""
    out: dict[str, set[str]] = {}
    for page in PAGES:
        for line in bash_lines(REPO / page):
            for target, argv in commands(line):
                flags = {a.split("=", 1)[0] for a in argv if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", a)}
                out.setdefault(target, set()).update(flags)
    return out


def test_pages_show_the_stage_commands() -> None:
    found = documented()
    for target in (
        "exiflang shards",
        "pipeline/build_shards.py",
        "exiflang train",
        "train/main.py",
        "exiflang embed",
        "exiflang index",
        "exiflang lookup",
        "exiflang detect",
        "exiflang benchmark",
    ):
        assert target in found, f"{target} is not in any page's bash block"


@pytest.mark.slow  # imports every command's module (torch, transformers, faiss): ~40 s on 2 loaded cores
@pytest.mark.parametrize("target", sorted(documented()))
def test_documented_options_exist(target: str) -> None:
    text = help_text(target)
    assert "usage:" in text, f"{target} --help printed no usage"
    missing = sorted(f for f in documented()[target] if not re.search(re.escape(f) + r"\b", text))
    assert not missing, f"{target}: options in the docs that --help does not know: {missing}"
