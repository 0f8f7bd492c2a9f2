"""ExifClip, its encoders and tokenizer: shapes, pooling, init paths, save/load, torchvision mapping."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DistilBertConfig, DistilBertModel, ResNetConfig, ResNetForImageClassification

from exiflang.train import encoders
from exiflang.train.model import ExifClip, ModelConfig
from exiflang.train.tokenizer import BERT_UNCASED_SIZE, bert_uncased_vocab_path, build_tokenizer, load_tokenizer

TEXTS = [
    "Make: Canon, Model: Canon EOS 5D, Exposure Time: 1/200 sec, F-Number: f/8.0",
    "Make: NIKON CORPORATION, Model: NIKON D70, ISO Speed Ratings: 200",
]


# ---------------------------------------------------------------- torchvision reference
def torchvision_resnet_state(
    layer_type: str = "bottleneck",
    depths=(3, 4, 6, 3),
    widths=(64, 128, 256, 512),
    stem: int = 64,
    fc_out: int = 1000,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A state dict with torchvision ResNet's exact key names and shapes (random values).

    Written from torchvision's architecture (``conv1/bn1``, ``layerS.I.convJ/bnJ``,
    ``downsample.0/1``, ``fc``), not from the HF names, so the mapping is tested independently.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2 / (cin * k * k))

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    bottleneck = layer_type == "bottleneck"
    expansion = 4 if bottleneck else 1
    conv("conv1", stem, 3, 7)
    bn("bn1", stem)
    inplanes = stem
    for s, (depth, width) in enumerate(zip(depths, widths), 1):
        for i in range(depth):
            p, stride = f"layer{s}.{i}", (2 if s > 1 and i == 0 else 1)
            shapes = (
                [(width, inplanes, 1), (width, width, 3), (width * expansion, width, 1)]
                if bottleneck
                else [(width, inplanes, 3), (width, width, 3)]
            )
            for j, (cout, cin, k) in enumerate(shapes, 1):
                conv(f"{p}.conv{j}", cout, cin, k)
                bn(f"{p}.bn{j}", cout)
            if i == 0 and (stride != 1 or inplanes != width * expansion):
                conv(f"{p}.downsample.0", width * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", width * expansion)
            inplanes = width * expansion
    sd["fc.weight"] = 0.01 * torch.randn(fc_out, inplanes, generator=g)
    sd["fc.bias"] = 0.01 * torch.randn(fc_out, generator=g)
    return sd


def torchvision_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depths) -> torch.Tensor:
    """torchvision ResNet (v1.5: stride in the 3x3 conv) eval forward, written with torch.nn.functional."""

    def bn(t, p):
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5
        )

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for s, depth in enumerate(depths, 1):
        for i in range(depth):
            p, stride = f"layer{s}.{i}", (2 if s > 1 and i == 0 else 1)
            n_convs = 3 if f"{p}.conv3.weight" in sd else 2
            out = x
            for j in range(1, n_convs + 1):
                w = sd[f"{p}.conv{j}.weight"]
                is_strided = j == 2 if n_convs == 3 else j == 1
                out = bn(F.conv2d(out, w, stride=stride if is_strided else 1, padding=w.shape[-1] // 2), f"{p}.bn{j}")
                out = F.relu(out) if j < n_convs else out
            identity = x
            if f"{p}.downsample.0.weight" in sd:
                identity = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + identity)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def test_resnet50_mapping_covers_hf_names_and_matches_forward():
    sd = torchvision_resnet_state()
    assert len(sd) == 320  # torchvision resnet50().state_dict() has 320 entries
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 25_557_032
    backbone, head, unknown = encoders.torchvision_to_hf_resnet(sd)
    assert unknown == [] and set(head) == {"weight", "bias"}
    model = encoders.ImageEncoder(encoders.build_resnet(encoders.resnet_config("resnet50")), 1000)
    own = model.backbone.state_dict()
    assert set(backbone) == set(own)
    assert all(backbone[k].shape == own[k].shape for k in own)
    model.backbone.load_state_dict(backbone)
    model.proj.load_state_dict(head)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = model.eval()(x), torchvision_forward(sd, x, (3, 4, 6, 3))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_image_init_from_torchvision_file_and_hf_folder(tmp_path):
    sd = torchvision_resnet_state("basic", (1, 1, 1, 1), (32, 64, 128, 256), stem=32)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "tv.pth")
    model = ExifClip(ModelConfig.preset("cpu-small", image_init=str(tmp_path / "tv.pth"))).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.image.backbone(x).pooler_output.flatten(1)
    want = torchvision_forward({**sd, "fc.weight": torch.eye(256), "fc.bias": torch.zeros(256)}, x, (1,) * 4)
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-4)

    hf = ResNetForImageClassification(ResNetConfig(**encoders.IMAGE_PRESETS["small"], num_labels=3))
    hf.save_pretrained(tmp_path / "hf")
    model = ExifClip(ModelConfig.preset("cpu-small", image_init=str(tmp_path / "hf")))
    for k, v in hf.resnet.state_dict().items():
        assert torch.equal(model.image.backbone.state_dict()[k], v), k

    bad = torchvision_resnet_state("basic", (1, 1, 1, 1), (16, 32, 64, 128), stem=16)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth"):
        ExifClip(ModelConfig.preset("cpu-small", image_init=str(tmp_path / "bad.pth")))


def test_torchvision_outputs_match_when_installed():
    tv = pytest.importorskip("torchvision")
    net = tv.models.resnet50().eval()
    backbone, head, _ = encoders.torchvision_to_hf_resnet(net.state_dict())
    enc = encoders.ImageEncoder(encoders.build_resnet(encoders.resnet_config("resnet50")), 1000).eval()
    enc.backbone.load_state_dict(backbone)
    enc.proj.load_state_dict(head)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), net(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- tokenizer
def test_packaged_vocab_is_bert_uncased_and_tokenizer_roundtrips(tmp_path):
    path = bert_uncased_vocab_path()
    assert len(path.read_text().splitlines()) == BERT_UNCASED_SIZE
    tok = build_tokenizer(max_length=64)
    assert len(tok) == BERT_UNCASED_SIZE and tok.pad_token_id == 0 and tok.model_max_length == 64
    ids = tok(TEXTS[0])["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "canon" in tokens and "exposure" in tokens
    assert len(tok("ISO " * 500, truncation=True)["input_ids"]) == 64
    tok.save_pretrained(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok")(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    cfg = tmp_path / "tok" / "tokenizer_config.json"  # a class this transformers lacks: files still load
    cfg.write_text(cfg.read_text().replace('"TokenizersBackend"', '"NoSuchTokenizer"'))
    assert load_tokenizer(tmp_path / "tok")(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_bytes(path.read_bytes())
    assert build_tokenizer(path=str(tmp_path / "vocab"))(TEXTS[1])["input_ids"] == tok(TEXTS[1])["input_ids"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_tokenizer("folder", path=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- model
def tiny(**overrides) -> ModelConfig:
    return ModelConfig.preset("cpu-small", **overrides)


def batch(tok=None, n: int = 2):
    tok = tok or build_tokenizer()
    enc = tok((TEXTS * n)[:n], padding=True, return_tensors="pt")
    return torch.randn(n, 3, 48, 48), enc["input_ids"], enc["attention_mask"]


def test_forward_shapes_norms_and_logit_scales():
    model = ExifClip(tiny())
    img, txt, scale = model(*batch())
    assert img.shape == txt.shape == (2, 128)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert float(scale) == pytest.approx(100.0) and "log_logit_scale" not in dict(model.named_parameters())
    assert model.text.proj is None  # mean pooling, text hidden 128 == joint 128: no projection

    learned = ExifClip(tiny(logit_scale="learned"))
    assert float(learned.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        learned.log_logit_scale.fill_(10.0)
    assert float(learned.logit_scale.detach()) == pytest.approx(100.0, rel=1e-5)


def test_text_overrides_reach_the_backbone_and_typos_are_refused():
    model = ExifClip(tiny(text_overrides={"dropout": 0.0, "attention_dropout": 0.0}))
    assert model.text.backbone.config.dropout == 0.0 and model.config.text_config["dropout"] == 0.0
    assert ExifClip(tiny()).text.backbone.config.dropout == 0.1  # DistilBERT's default
    with pytest.raises(ValueError, match=r"text overrides \['dropuot'\]: not fields of the distilbert"):
        ExifClip(tiny(text_overrides={"dropuot": 0.0}))


def test_mean_pooling_ignores_padding_and_paper_pooling_projects():
    model = ExifClip(tiny(embed_dim=64)).eval()
    assert model.text.proj is not None  # 128-d text into a 64-d joint space
    ids = torch.tensor([[101, 2191, 1024, 9330, 102]])
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = (padded != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(ids, torch.ones_like(ids)), model.encode_text(padded, mask), rtol=1e-5, atol=1e-5
        )
    paper = ExifClip(tiny(pooling="paper"))
    assert isinstance(paper.text.norm, torch.nn.LayerNorm) and paper.text.proj.out_features == 128
    assert paper.encode_text(ids, torch.ones_like(ids)).shape == (1, 128)


@pytest.mark.parametrize("arch", ["albert", "bert"])
def test_other_text_archs(arch):
    model = ExifClip(tiny(text_arch=arch))
    assert model(*batch())[1].shape == (2, 128)


def test_text_init_from_local_folder(tmp_path):
    DistilBertModel(DistilBertConfig(n_layers=1, dim=64, n_heads=2, hidden_dim=128, vocab_size=30522)).save_pretrained(
        tmp_path / "db"
    )
    model = ExifClip(tiny(text_init=str(tmp_path / "db")))
    assert model.config.text_config["dim"] == 64 and model.text.proj.in_features == 64
    with pytest.raises(FileNotFoundError, match="missing"):
        ExifClip(tiny(text_init=str(tmp_path / "missing")))


def test_cropclr_has_no_text_tower():
    model = ExifClip(tiny(cropclr=True))
    assert model.text is None
    with pytest.raises(RuntimeError, match="CropCLR"):
        model.encode_text(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    a, b, _ = model(torch.randn(3, 3, 48, 48), images2=torch.randn(3, 3, 48, 48))
    assert a.shape == b.shape == (3, 128)


def test_save_and_load_roundtrip_atomic_and_mismatch(tmp_path):
    tok = build_tokenizer()
    model = ExifClip(tiny(logit_scale="learned")).eval()
    tags = {"tags": ["Make", "Model"], "num_images": 3}
    out = model.save_pretrained(tmp_path / "m", tokenizer=tok, tags=tags)
    model.save_pretrained(tmp_path / "m", tokenizer=tok, tags=tags)  # replaces in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left behind
    assert {"config.json", "model.safetensors", "tags.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    loaded, tok2, tags2 = ExifClip.from_pretrained(out)
    assert tags2 == tags and tok2(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    images, ids, mask = batch(tok)
    with torch.no_grad():
        for x, y in zip(model(images, ids, mask), loaded(images, ids, mask)):
            torch.testing.assert_close(x, y)

    doc = json.loads((out / "config.json").read_text())
    doc["model"]["embed_dim"] = 64
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"model\.safetensors: does not match config\.json") as err:
        ExifClip.from_pretrained(out)
    assert "\n" not in str(err.value)
    doc["model"]["bogus"] = 1
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"config\.json: unknown model config keys \['bogus'\]"):
        ExifClip.from_pretrained(out)


def test_tokenizer_must_fit_the_text_encoder(tmp_path):
    small_vocab = ExifClip(tiny(vocab_size=100))
    with pytest.raises(ValueError, match="vocab_size=len"):
        small_vocab.save_pretrained(tmp_path / "m", tokenizer=build_tokenizer())
    assert not (tmp_path / "m").exists()
