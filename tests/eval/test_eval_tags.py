"""`exiflang eval-tags`: the report's structure and numbers against naive recomputations (tiny random
model), zero-shot candidates, the linear probe, errors; and end to end on the shared trained synth run."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from exiflang.eval.index.votes import plurality
from exiflang.eval.tags.classes import fit_tag_classes
from exiflang.eval.tags.command import main
from exiflang.eval.tags.evaluate import eval_tags
from exiflang.eval.tags.probe import C_GRID, choose_c, probe_predict
from exiflang.eval.tags.report import markdown
from exiflang.eval.tags.settings import TagEvalConfig
from exiflang.eval.tags.zero_shot import ZeroShot, candidate_exifs, template_exif
from tests.eval import lookup_fixtures as fx

METHODS = ("knn", "zero_shot", "probe", "majority")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> fx.TinyRun:
    return fx.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_report(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tag_eval")
    config = TagEvalConfig(k=3, per_side=fx.PER_SIDE, min_count=2, progress=False)
    report = eval_tags(tiny.model, tiny.train_shards, tiny.test_shards, out, config)
    return out, report


def _check_structure(report: dict, out) -> None:
    assert json.loads((out / "tag_eval.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "tag_eval.md").read_text()
    assert md == markdown(report)
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert lines[0] == "| tag | classes | n | kNN | zero-shot | probe | majority |"
    assert len(lines) == 2 + len(report["tags"]) + 1 and "**average" in lines[-1]
    assert report["n_tags_evaluated"] == len(report["tags"]) > 0
    for t in report["tags"].values():
        assert t["n_classes"] >= 2 and t["n_test"] > 0 and len(t["labels"]) == t["n_classes"]
        for m in METHODS:
            assert t["accuracy"][m] is None or 0.0 <= t["accuracy"][m] <= 1.0
    for m in METHODS:
        values = [t["accuracy"][m] for t in report["tags"].values()]
        if report["average"][m] is not None:
            assert report["average"][m] == pytest.approx(np.mean(values))
    assert not set(report["skipped"]) & set(report["tags"])


def test_report_structure_and_files(tiny_report):
    out, report = tiny_report
    _check_structure(report, out)
    vocab = json.loads((out / "emb_train" / "meta.json").read_text())["model_tags"]["n"]
    assert len(report["tags"]) + len(report["skipped"]) == vocab
    assert (out / "emb_train" / "meta.json").is_file() and (out / "index" / "index.json").is_file()
    assert report["text_format"] == "paper" and report["per_side"] == fx.PER_SIDE
    # A tag every photo shares one value of is not evaluated, and says why.
    assert "Resolution Unit" in report["skipped"] and "class" in report["skipped"]["Resolution Unit"]


def _exifs(table) -> list[dict]:
    return [json.loads(s) for s in table["exif"]]


def test_numbers_match_a_naive_recomputation(tiny, tiny_report):
    from exiflang.eval.embed.store import load_embeddings

    out, report = tiny_report
    tr, te = load_embeddings(out / "emb_train"), load_embeddings(out / "emb_test")
    tr_ex, te_ex = _exifs(tr.table), _exifs(te.table)
    vocab = json.loads((tiny.model / "tags.json").read_text())["tags"]
    classes = fit_tag_classes(tr_ex, vocab, min_count=2)
    sims = te.image @ tr.image.T  # exact cosine, brute force
    for tag, t in report["tags"].items():
        tc = classes[tag]
        y_tr = [tc.classify(e.get(tag)) for e in tr_ex]
        majority = Counter(c for c in y_tr if c is not None).most_common()
        majority = min(c for c, n in majority if n == majority[0][1])
        knn_hits = maj_hits = n = 0
        for q, e in enumerate(te_ex):
            truth = tc.classify(e.get(tag))
            if truth is None:
                continue
            n += 1
            order = np.argsort(-sims[q], kind="stable")[:3]
            vote = plurality([y_tr[i] for i in order], [float(sims[q, i]) for i in order])
            knn_hits += (majority if vote.value is None else vote.value) == truth
            maj_hits += majority == truth
        assert t["n_test"] == n
        assert t["accuracy"]["knn"] == pytest.approx(knn_hits / n), tag
        assert t["accuracy"]["majority"] == pytest.approx(maj_hits / n), tag
        assert t["majority_class"] == tc.labels[majority]


def test_reuse_and_prebuilt_inputs(tiny, tiny_report, tmp_path, capsys):
    out, report = tiny_report
    args = [
        "--model",
        str(tiny.model),
        "--out",
        str(tmp_path / "again"),
        "-k",
        "3",
        "--no-progress",
        "--train-emb",
        str(out / "emb_train"),
        "--test-emb",
        str(out / "emb_test"),
        "--index",
        str(out / "index"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| tag | classes | n | kNN | zero-shot | probe | majority |" in printed and "tag_eval.json" in printed
    again = json.loads((tmp_path / "again" / "tag_eval.json").read_text())
    assert again["tags"] == json.loads(json.dumps(report["tags"]))
    assert not (tmp_path / "again" / "emb_train").exists()


def test_bad_inputs(tiny, tiny_report, tmp_path, capsys):
    out, _ = tiny_report
    base = ["--model", str(tiny.model), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--test", str(tiny.test_shards)]) == 2
    assert "--train" in capsys.readouterr().err
    assert main(base + ["--train-emb", str(tmp_path), "--test-emb", str(out / "emb_test")]) == 2
    assert "meta.json" in capsys.readouterr().err
    # An index of other vectors than the train embeddings.
    assert (
        main(
            base
            + ["--train-emb", str(out / "emb_test"), "--test-emb", str(out / "emb_test"), "--index", str(out / "index")]
        )
        == 2
    )
    assert "index" in capsys.readouterr().err
    assert main(base + ["--train", str(tiny.train_shards), "--test", str(tiny.test_shards), "-k", "0"]) == 2
    assert (
        main(
            [
                "--model",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
                "--train",
                str(tiny.train_shards),
                "--test",
                str(tiny.test_shards),
            ]
        )
        == 2
    )
    assert "config.json" in capsys.readouterr().err


def test_settings_from_the_command_line():
    from exiflang.eval.tags.command import COMMAND

    argv = ["--model", "m", "--out", "o", "-k", "5", "--single-patch", "--probe-c", "cv", "--device", "cpu"]
    config = TagEvalConfig.from_args(COMMAND.parser().parse_args(argv + ["--no-progress"]))
    assert (config.k, config.mode, config.probe_c, config.progress) == (5, "single", None, False)
    assert config.embed_config().grid == config.grid and config.embed_config().device == "cpu"
    assert TagEvalConfig(vocab=["Make", "Model"]).vocab == ("Make", "Model")
    with pytest.raises(ValueError, match="k=0"):
        config.replace(k=0)
    with pytest.raises(TypeError, match="per_sid"):
        config.replace(per_sid=2)


def test_cropclr_model_has_no_zero_shot(tiny, tmp_path):
    import torch

    from exiflang.train.model import ExifClip, ModelConfig

    torch.manual_seed(0)
    model_dir = tmp_path / "cropclr"
    tags = json.loads((tiny.model / "tags.json").read_text())
    ExifClip(ModelConfig.preset("cpu-small", cropclr=True)).save_pretrained(model_dir, None, tags)
    report = eval_tags(
        model_dir, tiny.train_shards, tiny.test_shards, tmp_path / "out", k=3, per_side=1, progress=False
    )
    assert report["tags"] and all(t["accuracy"]["zero_shot"] is None for t in report["tags"].values())
    assert report["average"]["zero_shot"] is None and report["average"]["knn"] is not None
    assert "n/a" in (tmp_path / "out" / "tag_eval.md").read_text()


def test_zero_shot_candidates_and_argmax(tiny):
    from exiflang.eval.embed.batch import TextEncoder
    from exiflang.eval.embed.store import load_embeddings
    from exiflang.train.model import ExifClip

    emb = load_embeddings(tiny.emb)
    exifs = _exifs(emb.table)
    model, tok, tags = ExifClip.from_pretrained(tiny.model)
    vocab = tags["tags"]
    template = template_exif(exifs, vocab)
    assert template["Make"] == Counter(e["Make"] for e in exifs).most_common(1)[0][0]
    tc = fit_tag_classes(exifs, ["Model"], min_count=2)["Model"]
    cands = candidate_exifs(template, tc)
    assert [c["Model"] for c in cands] == tc.representative
    assert all(
        {k: v for k, v in c.items() if k != "Model"} == {k: v for k, v in template.items() if k != "Model"}
        for c in cands
    )
    encoder = TextEncoder(model, tok, vocab, "paper")
    zs = ZeroShot(encoder, template)
    texts = zs.text_embeddings(tc)
    assert texts.shape == (len(tc.labels), model.config.embed_dim)
    pred = zs.predict(emb.image, tc, texts)
    naive = [int(np.argmax([float(np.dot(img, t)) for t in texts])) for img in emb.image]
    np.testing.assert_array_equal(pred, naive)


def test_probe_learns_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    y = np.repeat(np.arange(3), 30)
    x = centres[y] + rng.normal(size=(90, 16))
    y_test = np.repeat(np.arange(3), 10)
    x_test = centres[y_test] + rng.normal(size=(30, 16))
    pred, c = probe_predict(x, y + 5, x_test, c=1.0)  # labels need not start at 0
    assert c == 1.0 and (pred == y_test + 5).mean() >= 0.95
    assert choose_c(x, y) in C_GRID
    pred_cv, c_cv = probe_predict(x, y, x_test, c=None)
    assert c_cv in C_GRID and (pred_cv == y_test).mean() >= 0.95
    with pytest.raises(ValueError):
        probe_predict(x, np.zeros(90, int), x_test)


# --- end to end on the shared trained run ---------------------------------------------------------


def test_eval_tags_on_the_synth_run(synth_run, tmp_path, capsys):
    """Train / held-out shards of the trained synth run (embedded once per session, shared with
    the lookup test); eval-tags builds the index and runs all four predictors."""
    out = tmp_path / "tag_eval"
    assert (
        main(
            [
                "--model",
                str(synth_run.model),
                "--out",
                str(out),
                "--no-progress",
                "--train",
                str(synth_run.train_shards),
                "--test",
                str(synth_run.heldout_shards),
                "--train-emb",
                str(fx.synth_embeddings(synth_run, "train")),
                "--test-emb",
                str(fx.synth_embeddings(synth_run, "heldout")),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "tag_eval.json").read_text())
    _check_structure(report, out)
    assert printed.startswith((out / "tag_eval.md").read_text())
    assert report["per_side"] == fx.SYNTH_PER_SIDE and report["n_train"] == 1440 and report["n_test"] == 160
    model = report["tags"]["Model"]
    assert model["n_classes"] == 8 and model["n_test"] == 160
    print(printed)
    assert model["accuracy"]["knn"] > model["accuracy"]["majority"] + 0.2
    assert report["average"]["knn"] > report["average"]["majority"]
