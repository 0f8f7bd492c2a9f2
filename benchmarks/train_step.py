"""Train-step throughput: samples/s and seconds per optimiser step for the `paper` model
(ResNet-50 + DistilBERT base) at 124 px with the real EXIF text length.

The text length comes from the dev photos: their EXIF rendered over the tags present in
more than half of them.  Baseline in the same run: a forward pass without gradients.  On a
GPU (when present) it also runs bf16 autocast at batch 256-1024 and estimates model FLOPs
utilisation against a measured bf16 matmul peak.

    python benchmarks/train_step.py [--batch 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from exiflang.pipeline.exif.parse import read_exif  # noqa: E402
from exiflang.pipeline.exif.text import render_text  # noqa: E402
from exiflang.train.loss import clip_loss, text_ids_from_strings  # noqa: E402
from exiflang.train.model import ExifClip, ModelConfig  # noqa: E402
from exiflang.train.optim import OptimConfig, build_optimizer  # noqa: E402
from exiflang.train.tokenizer import build_tokenizer  # noqa: E402


def dev_texts(photos: Path) -> list[str]:
    exifs = [read_exif(p.read_bytes()) for p in sorted(photos.glob("*.jpg"))]
    counts = Counter(t for e in exifs for t in e)
    vocab = sorted((t for t, c in counts.items() if c / len(exifs) > 0.5), key=lambda t: -counts[t])
    return [render_text(e, vocab) for e in exifs]


def _batch(tok, texts: list[str], n: int, device: torch.device) -> dict[str, torch.Tensor]:
    chosen = [texts[i % len(texts)] for i in range(n)]
    enc = tok(chosen, padding=True, truncation=True, max_length=512, return_tensors="pt")
    return {
        "images": torch.randn(n, 3, 124, 124, device=device),
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].to(device),
        "text_ids": text_ids_from_strings(chosen),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model: ExifClip, batch: dict, steps: int, train: bool, bf16: bool) -> float:
    """Mean seconds per step (after one warm-up step)."""
    device = batch["images"].device
    opt = build_optimizer(model, OptimConfig())
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else torch.no_grad
    times = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        if train:
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.enable_grad():
                img, txt, scale = model(batch["images"], batch["input_ids"], batch["attention_mask"])
                loss = clip_loss(img.float(), txt.float(), scale.float(), text_ids=batch["text_ids"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with ctx(), torch.no_grad():
                model(batch["images"], batch["input_ids"], batch["attention_mask"])
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matmul TFLOP/s on this GPU (the MFU denominator)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    _sync(device)
    return 20 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--batch", type=int, nargs="+", default=[16])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    texts = dev_texts(Path(args.photos))
    tok = build_tokenizer("bert-uncased", max_length=512)
    n_tok = sum(len(tok(t)["input_ids"]) for t in texts) / len(texts)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"\n{device} ({torch.get_num_threads()} threads), {len(texts)} dev texts, "
        f"mean {n_tok:.0f} tokens; model `paper` (ResNet-50 + DistilBERT base)\n"
    )
    model = ExifClip(ModelConfig.preset("paper", vocab_size=len(tok))).to(device)
    batches = args.batch if device.type == "cpu" else [256, 512, 1024]
    print("| batch | precision | forward only s/step | train s/step | train samples/s | train / forward |")
    print("|---|---|---|---|---|---|")
    for b in batches:
        batch = _batch(tok, texts, b, device)
        for bf16 in [False] if device.type == "cpu" else [True]:
            fwd = time_steps(model, batch, args.steps, train=False, bf16=bf16)
            trn = time_steps(model, batch, args.steps, train=True, bf16=bf16)
            print(f"| {b} | {'bf16' if bf16 else 'fp32'} | {fwd:.3f} | {trn:.3f} | {b / trn:.1f} | {trn / fwd:.2f} |")
    if device.type == "cuda":
        # ResNet-50 at 124 px ~ 4.1 GFLOPs * (124/224)^2 forward; DistilBERT ~ 2 * 66M * tokens.
        flops = 3 * (4.1e9 * (124 / 224) ** 2 + 2 * 66e6 * n_tok)
        peak = matmul_peak(device)
        print(
            f"\nmeasured bf16 peak {peak:.0f} TFLOP/s; model FLOPs/sample ~{flops / 1e9:.1f} G "
            f"(fwd+bwd); MFU at batch {b}: {b / trn * flops / 1e12 / peak:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
