"""The error contract (exiflang/errors.py) through the real commands: one line naming the file,
exit 2; a bug one line and exit 1; Ctrl-C 130; the traceback only with --debug / EXIFLANG_DEBUG=1.

Every bad input is made here: a regular file where an output folder should be, a folder below a
regular file, a truncated Parquet table, damaged model folders.  The model, shards, embeddings and
index are the tiny random-weight set-up of tests/eval/lookup_fixtures.py (about 10 s, once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exiflang import cli, errors
from exiflang.command import Command
from tests.eval import lookup_fixtures as fx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> fx.TinyRun:
    return fx.build(tmp_path_factory.mktemp("tiny"))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(err: str) -> str:
    """The single line on stderr (log lines of the command before it are not errors)."""
    lines = [line for line in err.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def command_args(name: str, tiny: fx.TinyRun, out: Path, shared_data: Path) -> list[str]:
    """A command line for ``name`` whose only fault is ``out``."""
    m, test = str(tiny.model), str(tiny.test_photos)
    return {
        "detect": ["detect", "--model", m, test, "--out", str(out), "--patches-per-side", "2"],
        "embed": ["embed", "--model", m, "--data", str(tiny.test_shards), "--out", str(out), "--no-progress"],
        "lookup": ["lookup", "--model", m, "--index", str(tiny.index), test, "--out", str(out / "answers.jsonl")],
        "index": ["index", "--emb", str(tiny.emb), "--out", str(out)],
        "eval-tags": [
            "eval-tags",
            "--model",
            m,
            "--train-emb",
            str(tiny.emb),
            "--index",
            str(tiny.index),
            "--test",
            str(tiny.test_shards),
            "--out",
            str(out),
            "--no-progress",
        ],
        "benchmark": [
            "benchmark",
            "--dataset",
            "folder",
            "--root",
            str(tiny.root),
            "--method",
            "noi",
            "--out",
            str(out),
            "--no-progress",
        ],
        "make-splices": [
            "make-splices",
            "--photos",
            str(shared_data / "photos"),
            "--out",
            str(out),
            "--count",
            "2",
            "--no-progress",
        ],
        "shards": ["shards", "--source", test, "--out", str(out), "--executor", "local", "-q"],
        "select-tags": ["select-tags", "--data", str(out)],
    }[name]


COMMANDS = ("detect", "embed", "lookup", "index", "eval-tags", "benchmark", "make-splices", "shards", "select-tags")


@pytest.mark.parametrize("name", COMMANDS)
def test_output_that_is_a_file_or_under_a_file_is_one_line(name, tiny, tmp_path, capsys, shared_data):
    blocker = tmp_path / "taken"
    blocker.write_text("a regular file, not a folder\n")
    for out in (blocker, blocker / "sub"):
        rc, _, err = run_cli(command_args(name, tiny, out, shared_data), capsys)
        line = one_error_line(err)
        assert rc == 2, err
        assert line.startswith("exiflang") and str(blocker) in line, line
    assert blocker.read_text() == "a regular file, not a folder\n"  # never replaced


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores a folder's write bits")
@pytest.mark.parametrize("name", ("detect", "embed", "index"))
def test_read_only_output_folder_is_one_line(name, tiny, tmp_path, capsys, shared_data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc, _, err = run_cli(command_args(name, tiny, locked / "out", shared_data), capsys)
    finally:
        locked.chmod(0o755)
    assert rc == 2 and str(locked) in one_error_line(err)


def damaged_models(tiny: fx.TinyRun, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model folder, the file its error must name)."""
    missing = root / "no_model"
    weights = root / "bad_weights"
    shutil.copytree(tiny.model, weights)
    (weights / "model.safetensors").write_bytes((tiny.model / "model.safetensors").read_bytes()[:1000])
    config = root / "bad_config"
    shutil.copytree(tiny.model, config)
    (config / "config.json").write_text('{"format": ')
    return {
        "missing": (missing, "no_model"),
        "weights": (weights, "model.safetensors"),
        "config": (config, "config.json"),
    }


@pytest.mark.parametrize("name", ("detect", "embed", "lookup"))
def test_damaged_model_folder_is_one_line_naming_the_file(name, tiny, tmp_path, capsys):
    for case, (model, needle) in damaged_models(tiny, tmp_path).items():
        args = {
            "detect": ["detect", "--model", str(model), str(tiny.test_photos), "--out", str(tmp_path / "d")],
            "embed": [
                "embed",
                "--model",
                str(model),
                "--data",
                str(tiny.test_shards),
                "--out",
                str(tmp_path / f"e_{case}"),
                "--no-progress",
            ],
            "lookup": ["lookup", "--model", str(model), "--index", str(tiny.index), str(tiny.test_photos)],
        }[name]
        rc, _, err = run_cli(args, capsys)
        line = one_error_line(err)
        assert rc == 2 and line.startswith(f"exiflang {name}: error: ") and needle in line, (case, err)


def damaged_table(tiny: fx.TinyRun, root: Path) -> tuple[Path, Path]:
    """A copy of the train shards with its first Parquet table cut in half."""
    data = root / "shards"
    shutil.copytree(tiny.train_shards, data)
    table = sorted(data.glob("*.parquet"))[0]
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    return data, table


def test_select_tags_on_a_damaged_table_names_it(tiny, tmp_path, capsys):
    data, table = damaged_table(tiny, tmp_path)
    rc, _, err = run_cli(["select-tags", "--data", str(data)], capsys)
    line = one_error_line(err)
    assert rc == 2 and line.startswith(f"exiflang select-tags: error: {table}: "), line


def subprocess_cli(args: list[str], env_debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop(errors.DEBUG_ENV, None)
    if env_debug:
        env[errors.DEBUG_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-m", "exiflang", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_debug_flag_anywhere_or_environment_shows_the_traceback(tiny, tmp_path):
    data, table = damaged_table(tiny, tmp_path)
    plain = subprocess_cli(["select-tags", "--data", str(data)])
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and str(table) in plain.stderr
    for args, env_debug in (
        (["--debug", "select-tags", "--data", str(data)], False),
        (["select-tags", "--debug", "--data", str(data)], False),
        (["select-tags", "--data", str(data)], True),
    ):
        shown = subprocess_cli(args, env_debug)
        assert shown.returncode == 2 and "Traceback (most recent call last)" in shown.stderr, args
        assert shown.stderr.strip().splitlines()[-1] == plain.stderr.strip(), args  # the same line, last


def test_a_module_run_directly_keeps_the_contract(tmp_path):
    """``python -m exiflang.commands.detect`` (no dispatcher) gives the same one line."""
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop(errors.DEBUG_ENV, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exiflang.commands.detect",
            "--model",
            str(tmp_path / "m"),
            str(tmp_path),
            "--out",
            str(blocker / "sub"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"exiflang detect: error: {blocker}: is a file, not a folder (so {blocker / 'sub'} cannot be made)"
    )


# --- the contract itself, on real exceptions raised by real operations -----------------------


def _buggy_main(argv: list[str]) -> int:
    return len(None)  # type: ignore[arg-type]  # a genuine TypeError: a bug, not bad input


def _interrupted_main(argv: list[str]) -> int:
    signal.raise_signal(signal.SIGINT)  # Python's own handler turns it into KeyboardInterrupt
    return 0


def _echo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true")
    p.add_argument("rest", nargs="*")


def _echo_run(args: argparse.Namespace) -> int:
    print(json.dumps({"debug": args.debug, "rest": args.rest}))
    return 0


# This module stands in as a command (registered as "echo" below) that declares --debug itself.
COMMAND = Command(
    prog="exiflang echo", doc="Prints its arguments.", add_arguments=_echo_arguments, run=_echo_run, accepts_debug=True
)


def test_bug_is_one_line_exit_1_with_a_hint_and_ctrl_c_is_130(monkeypatch, capsys):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    rc = errors.run_main("exiflang x", _buggy_main, [])
    err = capsys.readouterr().err
    assert rc == errors.EXIT_INTERNAL and len(err.strip().splitlines()) == 1
    assert err.startswith("exiflang x: internal error: TypeError: ") and "--debug" in err
    rc = errors.run_main("exiflang x", _interrupted_main, [])
    assert rc == 130 and capsys.readouterr().err.strip() == "exiflang x: interrupted"
    rc = errors.run_main("exiflang x", _buggy_main, ["--debug"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "len(None)" in err


def test_debug_is_passed_only_to_commands_that_declare_it(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "echo", ("tests.test_errors", "prints its arguments"))
    for argv, expected in (
        (["echo", "a", "--debug"], {"debug": True, "rest": ["a"]}),
        (["--debug", "echo", "a"], {"debug": True, "rest": ["a"]}),
        (["echo", "a", "--", "--debug"], {"debug": False, "rest": ["a", "--debug"]}),
    ):
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out) == expected
    # A command that does not declare it never sees it (argparse would refuse it).
    assert cli.main(["select-tags", "--debug", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: exiflang select-tags") and "--debug" not in out


def test_os_errors_name_the_file_in_the_way(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        (blocker / "a" / "b").mkdir(parents=True)
    made = blocker / "a" / "b"
    assert errors.one_line(info.value) == f"{blocker}: is a file, not a folder (so {made} cannot be made)"
    (tmp_path / "dir").mkdir()
    src = tmp_path / "tmp.json"
    src.write_text("{}")
    with pytest.raises(OSError) as info:
        os.replace(src, tmp_path / "dir")  # onto a folder: the destination is what the user named
    assert errors.one_line(info.value) == f"{tmp_path / 'dir'}: is a folder, not a file"
    with pytest.raises(OSError) as info:
        (tmp_path / "missing.txt").read_text()
    assert errors.one_line(info.value) == f"{tmp_path / 'missing.txt'}: No such file or directory"
    assert errors.is_expected(info.value)


def test_naming_attaches_the_file_to_errors_that_do_not_say_it(tmp_path):
    bad = tmp_path / "stats.json"
    bad.write_text('{"rows": ')
    with pytest.raises(ValueError) as info, errors.naming(bad):
        json.loads(bad.read_text())
    assert errors.one_line(info.value).startswith(f"{bad}: Expecting value")
    with pytest.raises(KeyError) as info, errors.naming(bad):
        {}["rows"]
    assert errors.one_line(info.value) == f"{bad}: missing key 'rows'" and errors.is_expected(info.value)


def test_check_out_helpers(tmp_path):
    assert errors.check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, never created
    with pytest.raises(errors.CommandError, match="is a folder, not a file"):
        errors.check_out_file(tmp_path)
    assert errors.pop_debug(["a", "--debug", "--", "--debug"]) == (True, ["a", "--", "--debug"])
