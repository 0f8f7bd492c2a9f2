"""The authors' released checkpoint (``wrapper_75_new.pth``) as an exiflang model: key mapping and checks.

Their ``EXIFNet`` wraps an OpenAI-CLIP object whose towers were swapped (docs/design.md §4), so the
state dict (under ``checkpoint["model"]``) holds:

- ``model.visual.*`` — a torchvision ResNet-50 whose ``fc`` is ``Linear(2048, 768)``: mapped to
  the HF ResNet backbone and the image projection;
- ``model.transformer.*`` — a ``DistilBertModel`` (distilbert-base-uncased layout): copied as is;
- CLIP leftovers never used by their forward (``model.token_embedding.weight``,
  ``model.positional_embedding``, ``model.ln_final.*``, ``model.text_projection``,
  ``model.logit_scale``) and ``sink_temp``: dropped and listed.

The result is the ``paper`` preset: mean pooling (their ``avg_word_embs=True``), fixed logit
scale 100 (CLIP ViT-B/32's ``logit_scale.exp()``, which their trainer used), the BERT uncased
tokenizer (distilbert-base-uncased's vocabulary).  Their training text was the ``code`` format
with value cleaning (docs/design.md §3); their 44-tag vocabulary is not published, pass ``--tags``.

The command is :mod:`exiflang.train.convert_authors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from exiflang.train.checkpoint import CheckpointError, load_plain
from exiflang.train.encoders import text_config, torchvision_to_hf_resnet
from exiflang.train.model import ExifClip, ModelConfig

CLIP_LEFTOVERS = (
    "model.token_embedding.",
    "model.positional_embedding",
    "model.ln_final.",
    "model.text_projection",
    "model.logit_scale",
    "sink_temp",
)
# Older transformers saved DistilBERT's position_ids buffer; it is recomputed, so drop it.
REBUILT_BUFFERS = ("model.transformer.embeddings.position_ids",)


class Split(NamedTuple):
    """The authors' state dict sorted by destination (exiflang key names)."""

    tensors: dict[str, torch.Tensor]
    ignored: list[str]
    unknown: list[str]


def split_authors_state(state: dict[str, torch.Tensor]) -> Split:
    """Rename the authors' keys to :class:`ExifClip` keys; list dropped and unrecognised keys."""
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    visual = {k[len("model.visual.") :]: v for k, v in state.items() if k.startswith("model.visual.")}
    backbone, head, unknown_visual = torchvision_to_hf_resnet(visual)
    tensors = {f"image.backbone.{k}": v for k, v in backbone.items()}
    tensors.update({f"image.proj.{k}": v for k, v in head.items()})
    unknown = [f"model.visual.{k}" for k in unknown_visual]
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith("model.visual."):
            continue
        if key.startswith("model.transformer."):
            if key in REBUILT_BUFFERS:
                ignored.append(key)
            else:
                tensors["text.backbone." + key[len("model.transformer.") :]] = value
        elif key.startswith(CLIP_LEFTOVERS):
            ignored.append(key)
        else:
            unknown.append(key)
    # fp16 CLIP habits: store everything floating as float32.
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return Split(tensors, sorted(ignored), sorted(unknown))


def infer_config(tensors: dict[str, torch.Tensor]) -> ModelConfig:
    """The ``paper`` preset, sized from the tensors (joint dim, vocab, DistilBERT depth/width)."""
    words = tensors["text.backbone.embeddings.word_embeddings.weight"]
    layers = {int(k.split(".")[4]) for k in tensors if k.startswith("text.backbone.transformer.layer.")}
    config = ModelConfig.preset(
        "paper", embed_dim=int(tensors["image.proj.weight"].shape[0]), vocab_size=int(words.shape[0])
    )
    tcfg = text_config("distilbert", "base", int(words.shape[0]))
    tcfg.dim = int(words.shape[1])
    tcfg.n_heads = max(1, tcfg.dim // 64)
    tcfg.n_layers = len(layers)
    tcfg.hidden_dim = int(tensors["text.backbone.transformer.layer.0.ffn.lin1.weight"].shape[0])
    tcfg.max_position_embeddings = int(tensors["text.backbone.embeddings.position_embeddings.weight"].shape[0])
    config.text_config = tcfg.to_dict()
    return config


def load_checkpoint(path: Path, unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict inside the authors' file (``checkpoint["model"]`` or the file itself).

    Read with ``torch.load(weights_only=True)``: tensors and plain values only, so the file cannot
    run code; anything else is refused with one line naming it.  ``unsafe`` (``--unsafe-load``)
    is the explicit opt-in to full unpickling, kept only because the released file could not be
    checked here: use it for a file you trust, and only if the safe load refuses it.
    """
    if unsafe:
        try:
            ckpt: Any = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ValueError(f"{path}: cannot load ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc
    else:
        try:
            ckpt = load_plain(path, hint=" (if you trust the file, retry with --unsafe-load)")
        except CheckpointError as exc:  # its message is "{path}: why"
            raise ValueError(f"{path}: cannot load: {str(exc)[len(str(path)) + 2 :]}") from exc
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors (expected checkpoint['model'])")
    return state


def convert(state: dict[str, torch.Tensor], *, allow_unknown: bool = False) -> tuple[ExifClip, Split]:
    """Build the :class:`ExifClip` holding the authors' weights; ``ValueError`` lists bad keys."""
    split = split_authors_state(state)
    if split.unknown and not allow_unknown:
        raise ValueError(
            f"{len(split.unknown)} unrecognised keys: {', '.join(split.unknown[:8])}"
            f"{' ...' if len(split.unknown) > 8 else ''} (pass --allow-unknown to drop them)"
        )
    for needed in (
        "image.proj.weight",
        "text.backbone.embeddings.word_embeddings.weight",
        "text.backbone.transformer.layer.0.ffn.lin1.weight",
    ):
        if needed not in split.tensors:
            raise ValueError(f"not the authors' layout: {needed} has no source key")
    model = ExifClip(infer_config(split.tensors), use_init_paths=False)
    own = model.state_dict()
    tensors = dict(split.tensors, log_logit_scale=own["log_logit_scale"])
    missing = sorted(k for k in own if k not in tensors and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in tensors if k not in own)
    shapes = sorted(k for k in tensors if k in own and tensors[k].shape != own[k].shape)
    if missing or extra or shapes:
        raise ValueError(
            f"checkpoint does not fit ResNet-50 + DistilBERT: missing {missing[:5]}, "
            f"unexpected {extra[:5]}, other shapes {shapes[:5]}"
        )
    model.load_state_dict(tensors, strict=False)
    return model.eval(), split
