"""Config presets/overrides/YAML, optimiser parameter groups and the learning-rate schedule."""

import itertools
import math

import pytest
import torch

from exiflang.train.config import PRESETS, load_config, save_config
from exiflang.train.optim import OptimConfig, build_optimizer, build_scheduler, lr_at, param_groups


def test_presets_and_overrides(tmp_path):
    cfg = load_config(
        "cpu-small",
        ["optim.lr=3e-4", "data.batch_size=8", "run.steps=5", "model.pooling=paper", "optim.betas=[0.9, 0.98]"],
        data="D",
    )
    assert cfg.model.image_arch == "small" and cfg.data.data == "D"
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.data.batch_size == 8
    assert cfg.model.pooling == "paper" and cfg.optim.betas == (0.9, 0.98)
    paper = load_config("paper")
    assert paper.data.batch_size == 1024 and paper.model.embed_dim == 768
    assert set(PRESETS) >= {"paper", "cpu-small"}


def test_yaml_roundtrip(tmp_path):
    cfg = load_config("cpu-small", ["run.steps=7"], data="D")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "args,match",
    [
        (("nope", []), "unknown preset"),
        (("paper", ["optim.lr"]), "expected section.key=value"),
        (("paper", ["optimizer.lr=1"]), "unknown section"),
        (("paper", ["optim.learning_rate=1"]), "unknown key optim.learning_rate"),
        (("missing.yaml", []), "config file not found"),
        (("paper", ["model.pooling=max"]), "pooling"),
    ],
)
def test_errors_are_one_line(args, match):
    with pytest.raises(ValueError, match=match) as exc:
        load_config(*args)
    assert "\n" not in str(exc.value)


def test_no_decay_on_norms_biases_and_scale():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.zeros(()))
    decay, no_decay = param_groups(model, 0.1, lr=1e-3)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, OptimConfig(name="adam", betas=(0.9, 0.98), eps=1e-6))
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.9, 0.98)


def test_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr=0.1)
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(10, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)
    values = [lr_at(s, 110, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


class _Towers(torch.nn.Module):
    """Names like ExifClip's: an image tower and a text backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Linear(3, 3)
        self.text = torch.nn.Module()
        self.text.backbone = torch.nn.Linear(3, 3)


def test_text_lr_scale_gives_the_text_backbone_its_own_lr_through_the_schedule():
    model, cfg = _Towers(), OptimConfig(lr=1e-3, warmup_steps=2, text_lr_scale=0.05)
    opt = build_optimizer(model, cfg)
    text = {id(p) for p in model.text.parameters()}
    sched = build_scheduler(opt, 10, cfg)
    lrs = {(id(p) in text): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs == {False: pytest.approx(1e-3 / 2), True: pytest.approx(5e-5 / 2)}  # warm-up step 0
    for step in range(1, 10):
        opt.step()
        sched.step()
        main = next(g for g in opt.param_groups if any(id(p) not in text for p in g["params"]))["lr"]
        for g in opt.param_groups:
            if any(id(p) in text for p in g["params"]):
                assert g["lr"] == pytest.approx(0.05 * main) and main == pytest.approx(lr_at(step, 10, cfg))
    # The default keeps the two groups (and optimiser state layout) of every earlier checkpoint.
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 2
