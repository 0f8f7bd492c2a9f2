"""Contrastive losses: a naive reference, multi-positive targets, and 2-rank == 1-process exactness."""

from __future__ import annotations

import gc
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from exiflang.train.loss import (
    DistributedClipLoss,
    clip_loss,
    crop_consistency_loss,
    cropclr_loss,
    text_ids_from_strings,
)


def naive_loss(img: torch.Tensor, txt: torch.Tensor, scale: float, ids=None) -> float:
    """Row by row: the mean over each row's positives of -log softmax, both directions, averaged."""
    n = len(img)
    ids = list(range(n)) if ids is None else [int(i) for i in ids]
    sims = [[scale * float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for direction in ("i2t", "t2i"):
        for i in range(n):
            row = [sims[i][j] if direction == "i2t" else sims[j][i] for j in range(n)]
            log_z = math.log(sum(math.exp(v - max(row)) for v in row)) + max(row)
            positives = [j for j in range(n) if ids[j] == ids[i]]
            total += sum(log_z - row[j] for j in positives) / len(positives) / n
    return total / 2


def features(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_plain_loss_matches_naive_reference():
    img, txt = features()
    assert float(clip_loss(img, txt, torch.tensor(10.0))) == pytest.approx(naive_loss(img, txt, 10.0), rel=1e-5)


def test_multi_positive_matches_naive_reference():
    img, txt = features(7)
    ids = torch.tensor([3, 1, 3, 2, 1, 3, 9])
    got = float(clip_loss(img, txt, torch.tensor(20.0), text_ids=ids))
    assert got == pytest.approx(naive_loss(img, txt, 20.0, ids), rel=1e-5)
    assert got != pytest.approx(float(clip_loss(img, txt, torch.tensor(20.0))), rel=1e-3)


def test_multi_positive_without_duplicates_equals_plain_loss_and_grads():
    img, txt = features()
    grads = []
    for ids in (None, torch.tensor([5, 4, 3, 2, 1, 0]) * 1000):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = clip_loss(a, b, torch.tensor(100.0), text_ids=ids)
        loss.backward()
        grads.append((loss.item(), a.grad, b.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][2], grads[1][2])


def test_cropclr_loss_chance_level_and_text_ids():
    view1, view2 = features(4)
    assert float(cropclr_loss(view1, view2, torch.tensor(1.0))) == pytest.approx(naive_loss(view1, view2, 1.0))
    same = F.normalize(torch.ones(5, 3), dim=-1)
    assert float(clip_loss(same, same, torch.tensor(100.0))) == pytest.approx(math.log(5), rel=1e-6)
    ids = text_ids_from_strings(["Make: Canon", "Make: Nikon", "Make: Canon"])
    assert ids.dtype == torch.long and ids[0] == ids[2] != ids[1]
    assert torch.equal(ids, text_ids_from_strings(["Make: Canon", "Make: Nikon", "Make: Canon"]))
    assert float(DistributedClipLoss()(view1, view2, torch.tensor(3.0))) == float(
        clip_loss(view1, view2, torch.tensor(3.0))
    )


# ---------------------------------------------------------------- 2 ranks == 1 process
class Towers(nn.Module):
    """Two linear 'encoders' and a learned log scale: enough to check every gradient path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Linear(5, 4)
        self.txt = nn.Linear(3, 4)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, x_img, x_txt):
        return (F.normalize(self.img(x_img), dim=-1), F.normalize(self.txt(x_txt), dim=-1), self.log_scale.exp())


def global_batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    # Duplicated ids straddle the two ranks' halves: cross-rank positives are exercised.
    return torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g), torch.tensor([0, 1, 2, 0, 3, 1, 4, 0])


def single_process(use_ids: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model = Towers()
    x_img, x_txt, ids = global_batch()
    loss = clip_loss(*model(x_img, x_txt), text_ids=ids if use_ids else None)
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}


def _rank_step(rank: int, world: int, use_ids: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """One DDP step on this rank's half of the global batch: (global mean loss, averaged grads)."""
    model = nn.parallel.DistributedDataParallel(Towers())
    x_img, x_txt, ids = global_batch()
    b = len(x_img) // world
    rows = slice(rank * b, (rank + 1) * b)
    loss = DistributedClipLoss()(*model(x_img[rows], x_txt[rows]), text_ids=ids[rows] if use_ids else None)
    loss.backward()  # DDP averages the gradients over ranks here
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return float(mean_loss) / world, {k.removeprefix("module."): p.grad.clone() for k, p in model.named_parameters()}


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {use_ids: _rank_step(rank, world, use_ids) for use_ids in (False, True)}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        # DDP reducers and autograd graphs that outlive the process group make gloo abort
        # (SIGABRT) at interpreter exit now and then: free them, then tear down together.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for use_ids in (False, True):
        want_loss, want_grads = single_process(use_ids)
        for rank in range(2):
            got_loss, got_grads = torch.load(tmp_path / f"rank{rank}.pt")[use_ids]
            assert got_loss == pytest.approx(want_loss, rel=1e-5), (use_ids, rank)
            assert set(got_grads) == set(want_grads)
            for name, grad in want_grads.items():
                torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-6, msg=f"{name} {use_ids}")


def test_engine_encodes_each_distinct_text_once_with_the_same_loss_and_grads():
    from types import SimpleNamespace

    from exiflang.train.engine import _step, unique_rows
    from exiflang.train.model import ExifClip, ModelConfig

    first, inverse = unique_rows(torch.tensor([5, 3, 5, 7, 3]))
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2, 1]
    torch.manual_seed(0)
    model = ExifClip(ModelConfig.preset("cpu-small", text_overrides={"dropout": 0.0, "attention_dropout": 0.0}))
    ids = torch.randint(1000, 2000, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    ids[1, 7:], mask[1, 7:] = 0, 0  # a shorter text, padded
    ids[3], ids[2], mask[3] = ids[1], ids[0], mask[1]  # rows 2 and 3 repeat rows 0 and 1
    batch = {
        "images": torch.randn(4, 3, 48, 48),
        "input_ids": ids,
        "attention_mask": mask,
        "text_ids": torch.tensor([10, 11, 10, 11]),
    }
    cfg = SimpleNamespace(
        run=SimpleNamespace(precision="fp32"),
        optim=SimpleNamespace(crop_consistency=0.0),
        data=SimpleNamespace(cropclr=False, group_crops=True),
    )
    env = SimpleNamespace(device=torch.device("cpu"))
    calls = []
    hook = model.text.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    deduped = _step(model, clip_loss, batch, env, cfg)
    deduped.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert calls == [torch.Size([2, 12])]  # two distinct texts encoded, not four
    cfg.data.group_crops = False
    torch.testing.assert_close(_step(model, clip_loss, batch, env, cfg), deduped)
    assert calls[1] == torch.Size([4, 12])  # ungrouped recipes encode every row, as before
    model.zero_grad()
    img, txt, scale = model(batch["images"], ids, mask)
    full = clip_loss(img, txt, scale, text_ids=batch["text_ids"])
    full.backward()
    hook.remove()
    torch.testing.assert_close(deduped, full)
    cfg.data.group_crops, cfg.optim.crop_consistency = True, 0.5
    batch["keys"] = ["p0", "p1", "p0", "p1"]  # rows 2 and 3: other crops of the same photos
    with_crops = _step(model, clip_loss, batch, env, cfg)
    torch.testing.assert_close(with_crops, full + 0.5 * crop_consistency_loss(img, torch.tensor([0, 1, 0, 1]), scale))
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_crop_consistency_loss_matches_a_loop_and_ignores_lonely_crops():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(7, 16), dim=-1)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # photos 2 and 3 have one crop each
    scale = torch.tensor(10.0)
    terms = []
    for i in range(7):
        partners = [j for j in range(7) if j != i and groups[j] == groups[i]]
        if not partners:
            continue
        others = [j for j in range(7) if j != i]
        log_z = torch.logsumexp(torch.stack([scale * img[i] @ img[j] for j in others]), 0)
        terms.append(torch.stack([log_z - scale * img[i] @ img[j] for j in partners]).mean())
    torch.testing.assert_close(crop_consistency_loss(img, groups, scale), torch.stack(terms).mean())
    assert float(crop_consistency_loss(img, torch.arange(7), scale)) == 0.0  # nobody has a partner
    tight = F.normalize(torch.eye(16)[groups] + 1e-3 * torch.randn(7, 16), dim=-1)
    assert float(crop_consistency_loss(tight, groups, torch.tensor(100.0))) < float(
        crop_consistency_loss(tight, torch.tensor([0, 1, 0, 1, 2, 2, 3]), torch.tensor(100.0))
    )
