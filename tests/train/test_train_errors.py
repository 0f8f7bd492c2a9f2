"""`train` turns expected failures into one line naming the file and exit code 2 (traceback only
with --debug / EXIFLANG_DEBUG=1); model-folder loading names the damaged file."""

import json
import os
import shutil
from pathlib import Path

import pytest

from exiflang.train import checkpoint
from exiflang.train.main import main as train_main
from exiflang.train.model import ExifClip
from tests.train.conftest import CKPT_TINY, checkpointed_run

TINY = CKPT_TINY


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(shards, a 2-step run with checkpoint step-0000002 and its final model folder)."""
    return checkpointed_run(tmp_path_factory.mktemp("errors"), steps=2)


def one_line_error(err: str, *needles: str) -> str:
    """The error line (the last); asserts it holds every needle and nothing printed a traceback."""
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, err[-3000:]
    assert sum("error:" in line for line in lines) == 1, err[-3000:]
    assert lines[-1].startswith("exiflang train: error: ")
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    "why,override", [("no_vocab_tags", 'data.tags=["NoSuchTag"]'), ("too_small", "data.patch_size=4000")]
)
def test_shards_without_a_usable_sample(made, tmp_path, capfd, workers, why, override):
    rc = train_main(
        [
            "--data",
            str(made[0]),
            "--out",
            str(tmp_path / "r"),
            *TINY,
            "run.steps=2",
            f"data.num_workers={workers}",
            override,
        ]
    )
    assert rc == 2
    one_line_error(capfd.readouterr().err, f"{made[0]}: no usable sample", why)


@pytest.fixture
def run(made, tmp_path) -> Path:
    shutil.copytree(made[1], tmp_path / "run")
    return tmp_path / "run"


def _resume(made, run: Path, *extra: str) -> int:
    return train_main(["--data", str(made[0]), "--out", str(run), "--resume", "latest", *TINY, "run.steps=4", *extra])


@pytest.mark.parametrize(
    "name,damage,needle",
    [
        (checkpoint.STATE, lambda b: b[: len(b) // 2], "unreadable"),
        (checkpoint.STATE, lambda b: b"", "unreadable"),
        (checkpoint.WEIGHTS, lambda b: b[:100], "not a readable safetensors file"),
        (checkpoint.WEIGHTS, lambda b: b"\x00" * 4096, "not a readable safetensors file"),
    ],
)
def test_corrupt_checkpoint_files(made, run, capsys, name, damage, needle):
    path = checkpoint.step_dir(run, 2) / name
    path.write_bytes(damage(path.read_bytes()))
    assert _resume(made, run) == 2
    one_line_error(capsys.readouterr().err, f"{path}: {needle}")


def test_checkpoint_of_another_model(made, run, capsys):
    assert _resume(made, run, "model.embed_dim=64") == 2
    one_line_error(capsys.readouterr().err, str(checkpoint.step_dir(run, 2) / checkpoint.WEIGHTS), "of another shape")


def test_state_that_is_not_a_training_state(made, run, capsys):
    import torch

    path = checkpoint.step_dir(run, 2) / checkpoint.STATE
    torch.save({"step": 2}, path)
    assert _resume(made, run) == 2
    one_line_error(capsys.readouterr().err, f"{path}: not an exiflang training state")


def test_output_that_is_a_file_or_under_a_file(made, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "run", afile / "a" / "b"):
        assert train_main(["--data", str(made[0]), "--out", str(out), *TINY, "run.steps=1"]) == 2
        one_line_error(capsys.readouterr().err, f"{afile}: is a file")
    assert afile.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory write bits")
def test_read_only_output_folder(made, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert train_main(["--data", str(made[0]), "--out", str(ro / "run"), *TINY, "run.steps=1"]) == 2
    finally:
        ro.chmod(0o755)
    one_line_error(capsys.readouterr().err, str(ro / "run"), "Permission denied")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(made, run, capsys, monkeypatch, how):
    (checkpoint.step_dir(run, 2) / checkpoint.STATE).write_bytes(b"junk")
    extra = ["--debug"] if how == "flag" else []
    if how == "env":
        monkeypatch.setenv("EXIFLANG_DEBUG", "1")
    assert _resume(made, run, *extra) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert err.strip().splitlines()[-1].startswith("exiflang train: error: ")


def _edit_config(folder: Path, **model: object) -> None:
    doc = json.loads((folder / "config.json").read_text())
    doc["model"].update(model)
    (folder / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "file,damage",
    [
        ("model.safetensors", lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 64)),
        ("config.json", lambda f: _edit_config(f, image_arch="nope", image_config=None)),
        ("config.json", lambda f: _edit_config(f, embed_dim=-1)),
        ("config.json", lambda f: _edit_config(f, text_config={"dim": "wide"})),
        (
            "config.json",
            lambda f: (f / "config.json").write_text('{"format": "exiflang-model", "format_version": "x"}'),
        ),
        ("tags.json", lambda f: (f / "tags.json").write_text("{")),
        ("model", lambda f: (f / "tokenizer.json").write_text("{")),
    ],
)
def test_model_folder_errors_name_the_file(made, tmp_path, file, damage):
    folder = tmp_path / "model"
    shutil.copytree(made[1] / "model", folder)
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        ExifClip.from_pretrained(folder)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(folder / file if file != "model" else folder) + ":")
