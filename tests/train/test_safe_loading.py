"""Loading never runs code: training state, image_init files, HF folders, model folders and the
authors' checkpoint refuse a pickle whose ``__reduce__`` touches a file, with one line naming it."""

import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from exiflang.train import checkpoint, convert_authors, encoders
from exiflang.train.main import main as train_main
from exiflang.train.model import ExifClip
from tests.train.conftest import CKPT_TINY, checkpointed_run

TINY = CKPT_TINY


class TouchFile:
    """Unpickling this opens ``marker`` for writing: creating the file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_crafted(path: Path, marker: Path, kind: str) -> None:
    """A crafted file at ``path``: a raw pickle (``pickle-N``: protocol N), or a torch zip archive."""
    if kind.startswith("pickle"):
        path.write_bytes(pickle.dumps({"optimizer": TouchFile(marker)}, protocol=int(kind[-1])))
    else:
        torch.save({"optimizer": TouchFile(marker), "step": 2}, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(shards, a 2-step run with checkpoint step-0000002)."""
    return checkpointed_run(tmp_path_factory.mktemp("safe"), steps=2)


def test_saved_state_is_plain_and_loads_weights_only(run):
    ck = run[1] / "checkpoints" / "step-0000002"
    raw = torch.load(ck / checkpoint.STATE, weights_only=True)  # would raise on any other object
    checkpoint.check_plain(raw)
    assert raw["format_version"] == checkpoint.STATE_VERSION and set(raw["rng"]) == {"0"}
    state = checkpoint.load_state(ck)
    assert state["step"] == 2 and state["position"]["step"] == 2


def test_rng_state_round_trips_through_plain_data():
    saved = checkpoint.rng_state()
    checkpoint.check_plain(saved)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoint.set_rng_state(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_rng_is_per_rank_with_rank_zero_as_fallback():
    state = {"rng": {"0": {"a": 0}, "2": {"a": 2}}}
    assert checkpoint.rng_for_rank(state, 2) == {"a": 2}
    assert checkpoint.rng_for_rank(state, 1) == {"a": 0}


def test_check_plain_names_a_non_plain_value():
    with pytest.raises(TypeError, match=r"state\.rng\.numpy: ndarray"):
        checkpoint.check_plain({"rng": {"numpy": np.zeros(3)}})


@pytest.mark.parametrize("kind", ["pickle-2", "pickle-5", "torch-zip"])
def test_crafted_train_state_is_refused_and_runs_nothing(run, tmp_path, capsys, kind):
    shards, src = run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    marker = tmp_path / "touched"
    write_crafted(dst / "checkpoints" / "step-0000002" / checkpoint.STATE, marker, kind)
    rc = train_main(["--data", str(shards), "--out", str(dst), "--resume", "latest", *TINY, "run.steps=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not marker.exists()
    assert f"step-0000002/{checkpoint.STATE}: refused" in err[-1] and "could run code" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_old_state_with_pickled_numpy_rng_is_refused(tmp_path):
    torch.save(
        {"optimizer": {}, "scheduler": {}, "position": {}, "step": 1, "rng": {"numpy": np.random.get_state()}},
        tmp_path / checkpoint.STATE,
    )
    with pytest.raises(checkpoint.CheckpointError, match=r"train_state\.pt: refused: .*numpy") as exc:
        checkpoint.load_state(tmp_path)
    assert "\n" not in str(exc.value)


def test_crafted_image_init_file_is_refused(run, tmp_path, capsys):
    marker, evil = tmp_path / "touched", tmp_path / "resnet.pth"
    torch.save({"state_dict": TouchFile(marker)}, evil)
    with pytest.raises(ValueError, match=r"resnet.pth: refused"):
        encoders.read_state_dict(evil)
    rc = train_main(
        ["--data", str(run[0]), "--out", str(tmp_path / "r"), *TINY, "run.steps=1", f"model.image_init={evil}"]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and str(evil) in err and "refused" in err and not marker.exists()


def test_crafted_pickle_in_a_hf_init_folder_is_refused(tmp_path):
    from transformers import DistilBertConfig

    folder, marker = tmp_path / "distil", tmp_path / "touched"
    DistilBertConfig(n_layers=1, dim=32, n_heads=2, hidden_dim=64).save_pretrained(folder)
    torch.save({"embeddings.word_embeddings.weight": TouchFile(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"distil: cannot load this model folder .*refused") as exc:
        encoders.build_text_backbone("distilbert", init=str(folder))
    assert not marker.exists() and "\n" not in str(exc.value)


def test_model_folder_with_a_pickle_as_weights_is_refused(run, tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "touched"
    shutil.copytree(run[1] / "model", folder)
    (folder / "model.safetensors").write_bytes(pickle.dumps(TouchFile(marker)))
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        ExifClip.from_pretrained(folder)
    assert not marker.exists()


def test_crafted_authors_checkpoint_is_refused(tmp_path, capsys):
    marker, evil = tmp_path / "touched", tmp_path / "wrapper_75_new.pth"
    write_crafted(evil, marker, "torch-zip")
    assert convert_authors.main([str(evil), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "wrapper_75_new.pth: cannot load: refused" in err and "--unsafe-load" in err
    assert "\n" not in err and not marker.exists()
