"""Issue 5's bar (p-mAP >= 0.8 and detection AP >= 0.8) on four held-out splice sets, opt-in:
``EXIFLANG_BAR=1`` / ``make test-bar`` (the run trains ~20 minutes; see tests/bar_run.py)."""
from __future__ import annotations

import json

import pytest
import torch

from tests import bar_run as br
from tests import synth_run as sr

ISSUE_BAR = 0.8
PER_SIDE = 10   # as the suite's held-out benchmark


@pytest.fixture(scope="module")
def bar_metrics(tmp_path_factory) -> dict[int, dict]:
    from exiflang.eval.benchmark.run import run_benchmark
    from exiflang.eval.benchmark.splices import make_splices
    run = br.build(sr.cache_dir("bar_run") or tmp_path_factory.mktemp("bar_run"))
    out = {}
    for seed, count in br.SETS:
        root = tmp_path_factory.mktemp(f"bar_set{seed}")
        make_splices([run.splice_photos], root / "set", count=count, authentic=count, seed=seed, progress=False)
        torch.manual_seed(0)
        m = run_benchmark(run.model, "folder", root / "set", root / "out", methods=["exif"],
                          per_side=PER_SIDE, device="cpu", progress=False)["methods"]["exif"]
        out[seed] = m
        print(json.dumps({"seed": seed, "spliced": m["spliced"], "p_map": m["p_map"],
                          "p_map_ncuts": m["localization"]["pixel_ap_ncuts"]["mean"],
                          **{k: v["ap"] for k, v in m["detection"].items()}}))
    return out


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.skipif(not br.ENABLED, reason="issue 5's bar run trains ~20 minutes: set EXIFLANG_BAR=1 "
                                           "(make test-bar)")
def test_twenty_minute_model_meets_the_issue_bar_on_four_heldout_splice_sets(bar_metrics):
    for seed, count in br.SETS:
        m = bar_metrics[seed]
        assert (m["spliced"], m["authentic"]) == (count, count)
        # The soft normalized-cuts map localizes; the mean-shift map is reported beside it.
        assert m["localization"]["pixel_ap_ncuts"]["mean"] >= ISSUE_BAR, seed
        assert m["detection"][m["default_score"]]["ap"] >= ISSUE_BAR, seed
