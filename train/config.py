"""Training configuration: typed dataclasses, the named presets, YAML files and key=value overrides.

``load_config("cpu-small", ["optim.lr=3e-4", "data.batch_size=64"])`` resolves a preset (or a
YAML file, whose ``preset:`` key names the base) and then dotted overrides; every run writes
the result to ``RUN/config.yaml``.  Unknown presets, sections or keys are one-line errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from exiflang.train.data.loader import DataConfig
from exiflang.train.encoders import text_init_folder
from exiflang.train.model import ModelConfig


@dataclass
class OptimConfig:
    """Optimiser and schedule.  ``adamw`` is the paper's; ``adam`` the authors' code."""

    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    crop_consistency: float = 0.0  # weight of exiflang.train.loss.crop_consistency_loss (with data.group_crops)

    def __post_init__(self) -> None:
        self.betas = cast("tuple[float, float]", tuple(self.betas))  # YAML gives a list


@dataclass
class RunConfig:
    """Length, cadence and hardware of a run."""

    steps: int = 1000  # optimiser steps in total
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2  # checkpoints kept besides the best
    eval_every: int = 0  # held-out numbers every N steps (0: only at the end)
    eval_data: str | None = None  # held-out shards (folder or URL): exiflang.train.heldout
    eval_samples: int = 512  # photos of eval_data used (the first, in sorted tar order)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    tokenizer: str = "auto"  # auto | bert-vocab | wordpiece | a local folder
    tensorboard: bool = True
    wandb: str = "off"  # off | online | offline (needs the optional wandb package)
    wandb_project: str = "exiflang"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(data=""))
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The paper: batch 1024, AdamW lr 1e-4, wd 1e-3, cosine, mixed precision.  The authors' code
# differs (Adam 0.9/0.98, eps 1e-6, wd 1e-4, 5 warm-up epochs): `optim.name=adam` etc.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "model": {},
        "data": {"batch_size": 1024, "num_workers": 8, "crops_per_image": 1},
        "optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 1e-3, "warmup_steps": 2000, "min_lr": 1e-7},
        "run": {"steps": 75_000, "ckpt_every": 2000, "log_every": 50},
    },
    "authors-code": {
        "model": {},
        "data": {"batch_size": 1024, "num_workers": 8, "text_format": "code"},
        "optim": {
            "name": "adam",
            "lr": 1e-4,
            "weight_decay": 1e-4,
            "betas": (0.9, 0.98),
            "eps": 1e-6,
            "warmup_steps": 3750,
            "min_lr": 1e-7,
        },
        "run": {"steps": 75_000, "ckpt_every": 2000, "log_every": 50},
    },
    "cpu-small": {
        "model": {"image_arch": "small", "text_size": "small", "embed_dim": 128},
        "data": {"batch_size": 32, "num_workers": 1, "crops_per_image": 4, "shuffle_buffer": 256, "max_text_len": 192},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-3, "warmup_steps": 20, "min_lr": 1e-5},
        "run": {"steps": 300, "ckpt_every": 100, "log_every": 10},
    },
}
SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


def _coerce(raw: str, current: Any) -> Any:
    """Parse an override's text with YAML, then match the current value's type."""
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(current, bool) or current is None or isinstance(value, type(current)):
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, (int, float)) and isinstance(value, str):
        return type(current)(value)
    return value


def _apply(sections: dict[str, dict[str, Any]], section: str, key: str, value: Any, source: str) -> None:
    if section not in SECTIONS:
        raise ValueError(f"{source}: unknown section {section!r} (expected {', '.join(SECTIONS)})")
    names = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if key not in names:
        raise ValueError(f"{source}: unknown key {section}.{key}")
    sections[section][key] = value


def _defaults(section: str) -> dict[str, Any]:
    obj = SECTIONS[section](data="") if section == "data" else SECTIONS[section]()
    return dataclasses.asdict(obj)


def load_config(preset_or_yaml: str = "paper", overrides: Sequence[str] = (), data: str | None = None) -> TrainConfig:
    """Resolve a preset name or YAML path plus ``section.key=value`` overrides."""
    preset = preset_or_yaml
    from_file: dict[str, Any] = {}
    path = Path(preset_or_yaml)
    if preset_or_yaml.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ValueError(f"{path}: config file not found")
        from_file = yaml.safe_load(path.read_text()) or {}
        if not isinstance(from_file, dict):
            raise ValueError(f"{path}: not a mapping of sections")
        preset = from_file.pop("preset", "paper")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (expected {', '.join(PRESETS)} or a .yaml file)")
    sections = {name: _defaults(name) for name in SECTIONS}
    for name, values in PRESETS[preset].items():
        for key, value in values.items():
            _apply(sections, name, key, value, f"preset {preset}")
    for name, values in from_file.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section {name!r} is not a mapping")
        for key, value in values.items():
            _apply(sections, name, key, value, str(path))
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        current = sections.get(section, {}).get(key)
        _apply(sections, section, key, _coerce(raw, current), f"override {item!r}")
    if data is not None:
        sections["data"]["data"] = data
    cfg = TrainConfig(
        model=ModelConfig(**sections["model"]),
        data=DataConfig(**sections["data"]),
        optim=OptimConfig(**sections["optim"]),
        run=RunConfig(**sections["run"]),
        preset=preset,
    )
    cfg.model.validate()
    text_init_folder(cfg.model.text_init)  # an unknown name / missing package: one line, now
    if cfg.optim.crop_consistency and (not cfg.data.group_crops or cfg.data.cropclr):
        # Without grouping a batch rarely holds two crops of a photo: the term would be ~0.
        raise ValueError("optim.crop_consistency needs data.group_crops=true (and no data.cropclr)")
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically), loadable by :func:`load_config`."""
    doc = {"preset": cfg.preset, **{k: v for k, v in cfg.to_dict().items() if k != "preset"}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(_plain(doc), sort_keys=False))
    tmp.replace(path)


def _plain(obj: Any) -> Any:
    """Tuples to lists so YAML stays plain (safe_load-able)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
