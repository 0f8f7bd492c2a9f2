"""The authors' checkpoint converter on a synthetic wrapper_75_new.pth with the real key names and shapes."""

from __future__ import annotations

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel

from exiflang.train import authors, convert_authors
from exiflang.train.encoders import torchvision_to_hf_resnet
from exiflang.train.model import ExifClip
from exiflang.train.tokenizer import build_tokenizer
from tests.train.test_model import torchvision_forward, torchvision_resnet_state


def authors_state() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(full state dict as EXIFNet saved it, its torchvision part, its DistilBERT part)."""
    visual = torchvision_resnet_state(fc_out=768, seed=3)
    torch.manual_seed(0)
    text = DistilBertModel(DistilBertConfig()).state_dict()
    state = {f"model.visual.{k}": v for k, v in visual.items()}
    state.update({f"model.transformer.{k}": v for k, v in text.items()})
    # Older transformers saved this buffer; the released file may carry it.
    state["model.transformer.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    # OpenAI CLIP ViT-B/32 leftovers (shapes as in that model), unused by EXIFNet.
    state.update(
        {
            "model.token_embedding.weight": torch.zeros(49408, 512),
            "model.positional_embedding": torch.zeros(77, 512),
            "model.ln_final.weight": torch.ones(512),
            "model.ln_final.bias": torch.zeros(512),
            "model.text_projection": torch.zeros(512, 512, dtype=torch.float16),
            "model.logit_scale": torch.tensor(4.6052),
            "sink_temp": torch.tensor(2.6593),
        }
    )
    return state, visual, text


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authors")
    state, visual, text = authors_state()
    torch.save({"epoch": 74, "model": state}, tmp / "wrapper_75_new.pth")
    tags = tmp / "tags.json"
    tags.write_text('{"tags": ["Make", "Model"]}')
    rc = convert_authors.main([str(tmp / "wrapper_75_new.pth"), "--out", str(tmp / "model"), "--tags", str(tags)])
    assert rc == 0
    return tmp, visual, text


@pytest.mark.slow
def test_converted_towers_equal_the_authors_modules(converted, capsys):
    tmp, visual, text = converted
    model, tok, tags = ExifClip.from_pretrained(tmp / "model")
    assert tags == {"tags": ["Make", "Model"]} and len(tok) == 30522
    assert model.config.pooling == "mean" and float(model.logit_scale) == pytest.approx(100.0)

    # Image tower: every parameter/buffer equals the mapped torchvision tensor; fc is the projection.
    backbone, head, _ = torchvision_to_hf_resnet(visual)
    own = model.image.backbone.state_dict()
    assert set(own) == set(backbone)
    assert all(torch.equal(own[k], v) for k, v in backbone.items())
    assert torch.equal(model.image.proj.weight, head["weight"]) and torch.equal(model.image.proj.bias, head["bias"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.image(x), torchvision_forward(visual, x, (3, 4, 6, 3)), rtol=1e-4, atol=1e-4)

    # Text tower: the authors' avg_word_embs output of a DistilBertModel holding the same weights.
    reference = DistilBertModel(DistilBertConfig())
    reference.load_state_dict(text)
    reference.eval()
    enc = tok(["Make: Canon, Model: Canon EOS 5D", "ISO Speed Ratings: 100"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        want = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(model.text(enc["input_ids"], enc["attention_mask"]), want)


def test_cli_reports_and_refuses(converted, capsys):
    tmp, _, _ = converted
    assert convert_authors.main([str(tmp / "wrapper_75_new.pth"), "--out", str(tmp / "model")]) == 2
    assert "exists (pass --force" in capsys.readouterr().err
    assert convert_authors.main([str(tmp / "nope.pth"), "--out", str(tmp / "m2")]) == 2
    assert "nope.pth: checkpoint not found" in capsys.readouterr().err
    (tmp / "junk.pth").write_bytes(b"not a pickle")
    assert convert_authors.main([str(tmp / "junk.pth"), "--out", str(tmp / "m3")]) == 2
    assert "junk.pth: cannot load" in capsys.readouterr().err


def test_unknown_and_missing_keys_are_named():
    state, _, _ = authors_state()
    split = authors.split_authors_state(state)
    assert "sink_temp" in split.ignored and "model.transformer.embeddings.position_ids" in split.ignored
    assert split.unknown == []
    with pytest.raises(ValueError, match=r"1 unrecognised keys: model\.extra_head\.weight"):
        authors.convert({**state, "model.extra_head.weight": torch.zeros(2)})
    del state["model.visual.layer3.2.conv2.weight"]
    with pytest.raises(ValueError, match=r"missing \['image\.backbone\.encoder\.stages\.2\.layers\.2\.layer\.1"):
        authors.convert(state)


def test_tokenizer_is_distilbert_uncased_vocab():
    # distilbert-base-uncased ids for "make" and "canon" (same vocabulary as bert-base-uncased).
    assert build_tokenizer()("make canon")["input_ids"] == [101, 2191, 9330, 102]


@pytest.mark.slow
def test_converted_folder_carries_the_authors_card(converted):
    from exiflang.train.card import read_model_card

    card = read_model_card(converted[0] / "model")
    assert card["source"].startswith("authors") and card["data"]["real"] is True
    assert "YFCC100M" in card["summary"] and card["numbers_from"].startswith("the paper")
