"""The self-contained HTML report and its SVG charts."""

from __future__ import annotations

import base64
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from exiflang.eval.report import html as report
from exiflang.eval.report.svg_plot import Series, format_tick, line_chart, nice_ticks


class _Tags(HTMLParser):
    """Collects start tags with their attributes, and checks every opened element is closed."""

    VOID = frozenset({"meta", "img", "br", "hr", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def _parse(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed elements {p.stack}"
    return p


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_nice_ticks_are_round_and_cover_the_range():
    for lo, hi in [(0, 800), (3.7, 6.4), (0.0012, 0.0031), (-5, 17), (10, 10), (1.5, 0.2)]:
        t = nice_ticks(lo, hi)
        assert t[0] <= min(lo, hi) and t[-1] >= max(lo, hi) and 3 <= len(t) <= 12
        steps = np.diff(t)
        assert np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
        assert any(np.isclose(mantissa, m) for m in (1, 2, 5))
    assert nice_ticks(0, 800) == [0, 200, 400, 600, 800]
    assert [format_tick(v, 0.5) for v in (0, 0.5, 1.5)] == ["0", "0.5", "1.5"]
    assert format_tick(20000, 5000) == "20k" and format_tick(400, 100) == "400"
    with pytest.raises(ValueError):
        nice_ticks(0, float("nan"))


def test_line_chart_is_valid_svg_with_escaped_text():
    svg = line_chart(
        [
            Series("loss <a>", [0, 10, 20, 30], [5.0, float("nan"), 3.0, 2.5]),
            Series("chance", [0, 30], [0.1, 0.1], dashed=True),
        ],
        title='Loss & "friends" <script>',
        x_label="step",
        y_label="loss",
    )
    root = ET.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert [len(p.get("points").split()) for p in lines] == [3, 2]  # the NaN point is left out
    assert lines[1].get("stroke-dasharray") and "<script>" not in svg
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert 'Loss & "friends" <script>' in texts and "loss <a>" in texts
    # the loss falls, so the line goes down the page (SVG y grows downwards)
    ys = [float(p.split(",")[1]) for p in lines[0].get("points").split()]
    assert ys[0] < ys[1] < ys[2]
    empty = ET.fromstring(line_chart([Series("x", [], [])], title="t"))
    assert "no data" in [t.text for t in empty.iter(f"{ns}text")]
    one = ET.fromstring(line_chart([Series("x", [5], [0.3])]))
    assert len(one.findall(f"{ns}circle")) == 1 and not one.findall(f"{ns}polyline")
    with pytest.raises(ValueError):
        Series("bad", [1, 2], [1])


@pytest.fixture
def parts(tmp_path):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 6.0 - s / 100, "samples_per_s": 40.0} for s in range(10, 310, 10)]
    rows += [
        {"step": s, "eval/camera_top1": 0.1 + s / 1000, "eval/chance": 0.125, "eval/metric": 0.2, "eval/images": 160.0}
        for s in (100, 200, 300)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    (run / "result.json").write_text(json.dumps({"step": 300, "loss": 3.0, "eval/camera_top1": 0.4}))
    (run / "config.yaml").write_text("run:\n  steps: 300  # <tag>\n")
    photo = tmp_path / "query.jpg"
    Image.fromarray(rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8)).save(photo, quality=90)
    overlay = tmp_path / "det" / "splice.png"
    overlay.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (800, 2000, 3), dtype=np.uint8)).save(overlay)
    mask = tmp_path / "det" / "splice_mask.png"
    Image.fromarray((rng.random((400, 500)) > 0.5).astype(np.uint8) * 255).save(mask)
    neighbours = [
        {"rank": i + 1, "key": f"k{i}", "similarity": 0.9 - i / 20, "exif": {"Make": "Canon", "Model": f"EOS <{i}>"}}
        for i in range(12)
    ]
    lookup = [
        {
            "file": str(photo),
            "width": 1000,
            "height": 700,
            "neighbours": neighbours,
            "predictions": {
                "ISO Speed Ratings": {"value": "100", "share": 0.5, "n_with_tag": 10},
                "Make": {"value": "Canon", "share": 0.8, "n_with_tag": 10},
                "Model": {"value": "EOS <1>", "share": 0.3, "n_with_tag": 10},
            },
            "truth": {"Make": "Canon", "Model": "EOS 5D"},
        },
        {"file": str(tmp_path / "gone.jpg"), "error": "gone.jpg: not found"},
    ]
    detections = [
        {
            "name": "splice",
            "outputs": {"png": str(overlay)},
            "truth_mask_png": str(mask),
            "scores": {"score_exp": 1.5, "score_mean_dist": 0.2},
            "timings": {"total": 0.8},
            "metrics": {"AP": 0.7},
            "splice_fraction": 0.12,
        },
        {"name": "relative", "overlay_png": "det/splice.png", "scores": {"score_exp": 0.1}},
    ]
    metrics = {
        "held-out camera retrieval": {"top1": 0.456, "chance": 0.125},
        "splice benchmark": {"synthetic": {"p-mAP": 0.6, "cIoU": 0.5}, "RT": {"p-mAP": 0.2}},
    }
    return dict(run=run, lookup=lookup, detections=detections, metrics=metrics)


def test_full_report_is_self_contained_and_escaped(tmp_path, parts):
    out = report.write_report(
        tmp_path / "report.html",
        title="Demo <run>",
        run_dir=parts["run"],
        lookup=parts["lookup"],
        detections=parts["detections"],
        metrics=parts["metrics"],
        notes=["trained <b>fast</b>"],
    )
    text = out.read_text()
    tags = _parse(text).tags
    assert out.stat().st_size < 3_000_000 and "not run" not in text
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # nothing outside the file
    imgs = [_decode(a["src"]) for t, a in tags if t == "img"]
    # query thumbnail, overlay, truth mask, the overlay again (relative path, beside the report)
    assert [max(i.size) <= lim for i, lim in zip(imgs, (320, 900, 300, 900))] == [True] * 4
    assert imgs[0].size == (320, 224) and imgs[1].size == (900, 360) and imgs[0].format == "JPEG"
    assert sum(t == "svg" for t, _ in tags) == 2  # loss, held-out curves
    assert "&lt;b&gt;fast&lt;/b&gt;" in text and "Demo &lt;run&gt;" in text and "EOS &lt;1&gt;" in text
    assert "&lt;tag&gt;" in text and "<tag>" not in text
    assert text.count("✓") == 1 and text.count("✗") == 1  # Make right, Model wrong
    assert "1 of 2 tags with a known truth predicted right" in text
    assert ">k9<" in text and ">k10<" not in text  # at most 10 neighbours
    assert text.index(">Make<") < text.index(">ISO Speed Ratings<")  # Make/Model first
    assert "gone.jpg: not found" in text and "12.0%" in text and "p-mAP" in text and "0.456" in text
    assert "camera_top1" in text and "chance" in text and ">metric<" not in text


def test_missing_parts_say_not_run_and_broken_images_are_named(tmp_path):
    out = report.write_report(tmp_path / "r" / "empty.html", title="empty")
    text = out.read_text()
    _parse(text)
    assert text.count("not run") == 4
    out = report.write_report(
        tmp_path / "r2.html",
        title="x",
        run_dir=tmp_path / "no_run",
        detections=[{"name": "a", "overlay_png": str(tmp_path / "missing.png")}],
        lookup=[{"file": str(tmp_path / "nothing.jpg"), "neighbours": [], "predictions": {}}],
    )
    text = out.read_text()
    assert "image unavailable" in text and "missing.png" in text and "nothing.jpg" in text
    assert text.count("not run") == 2  # training and metrics


def test_command_builds_report_from_files(tmp_path, parts, capsys):
    lk, det, met = tmp_path / "lookup.jsonl", tmp_path / "det.jsonl", tmp_path / "metrics.json"
    lk.write_text("\n".join(json.dumps(r) for r in parts["lookup"]) + "\n")
    det.write_text(json.dumps(parts["detections"][0]) + "\n")
    met.write_text(json.dumps(parts["metrics"]))
    out = tmp_path / "cli.html"
    rc = report.main(
        [
            "--out",
            str(out),
            "--run",
            str(parts["run"]),
            "--lookup",
            str(lk),
            "--detections",
            str(det),
            "--metrics",
            str(met),
            "--note",
            "hello",
        ]
    )
    assert rc == 0 and str(out.resolve()) in capsys.readouterr().out
    assert "hello" in out.read_text() and "not run" not in out.read_text()
    assert report.main(["--out", str(out), "--metrics", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.json" in err and len(err.splitlines()) == 1
