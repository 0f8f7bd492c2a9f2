"""ExifClip: the two-tower image/EXIF-text model, its config, and its self-contained model folder.

A model folder holds ``config.json`` (this module's :class:`ModelConfig`, with the resolved
backbone configs, so no init path or hub is needed to rebuild it), ``model.safetensors``, the
tokenizer files and ``tags.json``.  :meth:`ExifClip.save_pretrained` writes it atomically;
:meth:`ExifClip.from_pretrained` returns a :class:`Pretrained` bundle ``(model, tokenizer, tags)``
that unpacks like a tuple.

Logit scale: ``fixed`` keeps ``logit_scale_init`` (100, the authors' code) as a buffer; ``learned``
keeps its log as a parameter (init ``1/0.07`` as in CLIP) and the returned scale is clamped at
``logit_scale_max`` (100) — the clamp is applied in the forward, so no optimizer hook is needed.

CropCLR (``cropclr=True``): no text tower; ``forward(view1, images2=view2)`` embeds two crops.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ResNetConfig, ResNetModel

from exiflang.train import encoders
from exiflang.train.checkpoint import read_safetensors
from exiflang.train.config import ModelConfig
from exiflang.train.tokenizer import load_tokenizer

FORMAT = "exiflang-model"
FORMAT_VERSION = 1
_STRICT_ERRORS: tuple[type[Exception], ...]
try:  # transformers' config classes validate fields with this (huggingface_hub >= 0.35)
    from huggingface_hub.errors import StrictDataclassError

    _STRICT_ERRORS = (StrictDataclassError,)
except ImportError:  # pragma: no cover - older hub: those checks raise TypeError/ValueError
    _STRICT_ERRORS = ()
# What building a model from a damaged-but-parseable config.json raises.
_CONFIG_ERRORS = (ValueError, TypeError, KeyError, AttributeError, *_STRICT_ERRORS)


class Pretrained(NamedTuple):
    """What :meth:`ExifClip.from_pretrained` returns; ``model, tok, tags = ...`` works."""

    model: ExifClip
    tokenizer: PreTrainedTokenizerBase | None
    tags: dict[str, Any] | None


class ExifClip(nn.Module):
    """Image tower + EXIF-text tower (absent for CropCLR) + logit scale.

    ``use_init_paths=False`` ignores ``image_init``/``text_init`` (used when loading a folder,
    whose weights replace them anyway).
    """

    def __init__(self, config: ModelConfig, *, use_init_paths: bool = True) -> None:
        super().__init__()
        config = dataclasses.replace(config)
        config.validate()
        self.image = encoders.ImageEncoder(self._image_backbone(config, use_init_paths), config.embed_dim)
        config.image_config = self.image.backbone.config.to_dict()
        self.text: encoders.TextEncoder | None = None
        if not config.cropclr:
            backbone = self._text_backbone(config, use_init_paths)
            config.text_arch = encoders.text_arch_of(backbone)  # a text_init folder picks its own
            config.text_config = backbone.config.to_dict()
            config.vocab_size = backbone.config.vocab_size
            self.text = encoders.TextEncoder(backbone, config.pooling, config.embed_dim)
        self.config = config
        learned = config.logit_scale == "learned"
        init = config.logit_scale_init or (1 / 0.07 if learned else 100.0)
        log_scale = torch.tensor(math.log(init), dtype=torch.float32)
        if learned:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @staticmethod
    def _image_backbone(config: ModelConfig, use_init: bool) -> ResNetModel:
        if config.image_config is not None:
            rcfg = ResNetConfig.from_dict(config.image_config)
        else:
            rcfg = encoders.resnet_config(config.image_arch, config.image_overrides)
        backbone = encoders.build_resnet(rcfg, config.image_init if use_init else None)
        if not config.image_stem_pool:
            # Parameter-free: weights are unchanged (the stem's MaxPool2d slot takes a no-op module).
            backbone.embedder.pooler = nn.Identity()  # type: ignore[assignment]
        return backbone

    @staticmethod
    def _text_backbone(config: ModelConfig, use_init: bool) -> PreTrainedModel:
        if use_init and encoders.text_init_folder(config.text_init) is not None:
            return encoders.build_text_backbone(config.text_arch, init=config.text_init)
        if config.text_config is not None:
            tcfg = encoders.text_config_from_dict(config.text_arch, config.text_config)
        else:
            tcfg = encoders.text_config(config.text_arch, config.text_size, config.vocab_size, config.text_overrides)
        return encoders.build_text_backbone(config.text_arch, tcfg)

    @property
    def logit_scale(self) -> torch.Tensor:
        """Scalar tensor in ``(0, logit_scale_max]``; multiplies cosine similarities."""
        return self.log_logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised float ``[B,3,H,W]`` -> L2-normalised ``[B, embed_dim]``."""
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B,T]`` + 0/1 mask ``[B,T]`` -> L2-normalised ``[B, embed_dim]``."""
        if self.text is None:
            raise RuntimeError("this is a CropCLR (image-only) model: it has no text encoder")
        return F.normalize(self.text(input_ids, attention_mask), dim=-1)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        images2: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_emb [B,D], text_emb [B,D], logit_scale [])``, embeddings L2-normalised.

        CropCLR: pass the second crops as ``images2`` ``[B,3,H,W]``; both views go through the
        ResNet as one batch and ``(view1_emb, view2_emb, logit_scale)`` comes back.
        """
        if self.text is None:
            if images2 is None:
                raise ValueError("a CropCLR model needs images2 (the second crops)")
            both = self.encode_image(torch.cat([images, images2]))
            return both[: len(images)], both[len(images) :], self.logit_scale
        if input_ids is None or attention_mask is None:
            raise ValueError("input_ids and attention_mask are required (this model has a text tower)")
        return self.encode_image(images), self.encode_text(input_ids, attention_mask), self.logit_scale

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raise ``ValueError`` when the tokenizer's ids do not fit the text embedding table."""
        if self.text is None:
            return
        if len(tokenizer) > self.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens, the text encoder only "
                f"{self.config.vocab_size}: set vocab_size=len(tokenizer)"
            )
        if tokenizer.pad_token_id != self.text.backbone.config.pad_token_id:
            raise ValueError(
                f"tokenizer pad id {tokenizer.pad_token_id} != text encoder's {self.text.backbone.config.pad_token_id}"
            )

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase | None = None,
        tags: dict[str, Any] | None = None,
    ) -> Path:
        """Write the model folder atomically (temp folder beside it, then rename); returns its path.

        An existing folder is replaced as a whole.  Call on rank 0 only.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.config.to_dict()}
            (tmp / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            if tags is not None:
                (tmp / "tags.json").write_text(json.dumps(tags, indent=2) + "\n")
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Pretrained:
        """Load a model folder: ``Pretrained(model, tokenizer or None, tags dict or None)``.

        The model comes back in eval mode.  Nothing in the folder can run code (JSON,
        safetensors, tokenizer files).  Any problem — a damaged or mismatched file, a config
        that cannot be built — raises a one-line ``FileNotFoundError`` / ``ValueError`` naming
        the file.
        """
        folder = Path(directory)
        config_path = folder / "config.json"
        config = read_config(config_path)
        try:
            model = cls(config, use_init_paths=False)
        except _CONFIG_ERRORS as exc:
            raise ValueError(f"{config_path}: cannot build the model ({_one_line(exc)})") from exc
        load_weights(model, folder / "model.safetensors", map_location)
        model.eval()
        return Pretrained(model.to(map_location), _folder_tokenizer(folder), _folder_tags(folder))


def read_config(path: Path) -> ModelConfig:
    """Parse an exiflang ``config.json``; any problem is a one-line error naming ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not an exiflang model folder)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not an exiflang model config (format != {FORMAT!r})")
    version = doc.get("format_version", 0)
    if not isinstance(version, int):
        raise ValueError(f"{path}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this exiflang")
    try:
        return ModelConfig.from_dict(doc.get("model", {}), source=str(path))
    except TypeError as exc:
        raise ValueError(f"{path}: bad model config ({_one_line(exc)})") from exc


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict)`` whose failure is a single line naming ``source``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing (e.g. {missing[:2]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
            f"{len(shapes)} of another shape (e.g. {shapes[:2]})" if shapes else "",
        ]
        raise ValueError(f"{source}: does not match config.json: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Load ``path`` (safetensors) into ``model`` strictly; every failure is one line naming ``path``."""
    _load_strict(model, read_safetensors(path, device), path)


def _folder_tokenizer(folder: Path) -> PreTrainedTokenizerBase | None:
    """The model folder's tokenizer, None when it has no tokenizer files."""
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    try:
        return load_tokenizer(folder)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:
        raise ValueError(f"{folder}: cannot load the tokenizer ({_one_line(exc)})") from exc


def _folder_tags(folder: Path) -> dict[str, Any] | None:
    """The model folder's ``tags.json`` (None when absent); damaged -> one line naming it."""
    path = folder / "tags.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({_one_line(exc)})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{path}: 'tags' is not a list of tag names")
    return doc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(exc).split())[:limit]


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``, replacing an existing folder; the old one is removed last."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
