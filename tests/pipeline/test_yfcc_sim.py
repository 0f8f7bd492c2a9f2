"""The YFCC-like simulator (benchmarks/yfcc_sim.py): its files, its hosts, its counters, and a crawl of it."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.yfcc_sim import DEFAULT_SHARES, FATES, SimConfig, SimWorld, YfccSimulator, host_of, write_files
from exiflang.pipeline import records as st
from exiflang.pipeline.exif.parse import read_exif
from exiflang.pipeline.shards.files import read_tables
from exiflang.pipeline.shards.jpeg_check import jpeg_problem
from exiflang.pipeline.sources.yfcc import YfccSource
from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex

REPO = Path(__file__).resolve().parents[2]
# Every rare fate common enough to appear in a few hundred rows; stalls stay few (each costs
# the crawler (retries + 1) x timeout per URL).
TEST_SHARES = dict.fromkeys(DEFAULT_SHARES, 0.03) | {"gone404": 0.18, "gone410": 0.08, "stall": 0.012}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


@pytest.fixture(scope="module")
def world() -> SimWorld:
    return SimWorld(
        SimConfig(n_rows=300, seed=1, shares=TEST_SHARES, pool_size=12, stall_seconds=20.0, retry_after=1.0)
    )


@pytest.fixture
def sim(world):
    with YfccSimulator(world, lifetime=120) as s:
        yield s


@pytest.fixture(scope="module")
def files(world, tmp_path_factory):
    return write_files(world, tmp_path_factory.mktemp("yfcc_sim"), port=8123)


def fetch(url: str, timeout: float = 5.0) -> tuple[int, dict, bytes, str]:
    """(status, headers, body, final URL); urllib follows redirects, errors are returned."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read(), resp.url
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read(), url


def first_of(world: SimWorld, fate: str):
    return next(ln for ln in world.lines() if not ln.video and ln.fate == fate)


# -- the world and its files ---------------------------------------------------------------


def test_world_is_deterministic_and_ids_invert(world):
    again = SimWorld(world.config)
    assert [again.line(i) for i in range(50)] == [world.line(i) for i in range(50)]
    other = SimWorld(SimConfig(n_rows=300, seed=2, shares=TEST_SHARES, pool_size=12))
    assert [other.line(i).photo_id for i in range(50)] != [world.line(i).photo_id for i in range(50)]
    for ln in world.lines(0, 100):
        assert world.line_of(ln.photo_id) == ln and world.line_of(str(ln.photo_id)) == ln
    assert world.line_of(world.line(5).photo_id + 1) is None  # between two ids
    assert world.line_of(123) is None and world.line_of("x") is None
    assert world.line_of(world.config.id_base + 300 * 8) is None  # past the last line
    assert {ln.fate for ln in world.lines()} == set(FATES)
    # Default shares at a larger N: about 30% gone, 2% videos, 60% ok.
    big = SimWorld(SimConfig(n_rows=6000, seed=3))
    fates = Counter("video" if ln.video else ln.fate for ln in big.lines())
    assert 0.27 < (fates["gone404"] + fates["gone410"]) / 6000 < 0.33
    assert 0.01 < fates["video"] / 6000 < 0.03 and 0.55 < fates["ok"] / 6000 < 0.65


def test_photo_bytes_are_unique_except_deliberate_duplicates(world):
    shas: dict[str, int] = {}
    for ln in world.lines():
        if ln.video or ln.fate in ("duplicate",):
            continue
        sha = hashlib.sha256(world.photo_bytes(ln)).hexdigest()
        assert sha not in shas, (ln.line, shas.get(sha))
        shas[sha] = ln.line
    dup = first_of(world, "duplicate")
    exp = world.expected(dup.photo_id)
    assert exp.status == st.DUPLICATE and int(exp.duplicate_of) < dup.photo_id
    source = world.line_of(exp.duplicate_of)
    assert source.fate == "ok" and world.photo_bytes(dup) == world.photo_bytes(source)
    ok = world.photo_bytes(first_of(world, "ok"))
    assert Image.open(io.BytesIO(ok)).size[1] >= 124 and jpeg_problem(ok) is None
    assert len(read_exif(ok)) >= 10
    assert read_exif(world.photo_bytes(first_of(world, "noexif"))) == {}
    assert "truncated" in jpeg_problem(world.photo_bytes(first_of(world, "short")))


@pytest.mark.parametrize("layout,name", [(25, "dataset_2016"), (23, "dataset_2014")])
def test_files_parse_with_the_pipeline_readers(world, files, layout, name):
    truth = pq.read_table(files.truth).to_pylist()
    template = "http://127.0.0.1{farm}:8123/{server}/{id}_{original_secret}_o.{ext}"
    source = YfccSource(getattr(files, name), original_template=template)
    rows = list(source.rows())
    summary = json.loads(files.summary.read_text())
    assert source.layouts == {layout: 300} and source.skipped == {"video": summary["videos"]}
    assert not source.flagged and len(rows) == len(truth) == summary["photos"] > 250
    for row, want in zip(rows, truth):
        ln = world.line_of(row.photo_id)
        assert (row.index, row.photo_id, row.url) == (want["source_index"], want["photo_id"], want["url"])
        assert row.url.startswith(f"http://{host_of(ln.farm)}:8123/")
        assert row.fallback_urls == (f"http://{host_of(ln.farm)}:8123/{ln.server}/{ln.photo_id}_{ln.secret}.jpg",)
        assert want["expected_status"] == world.expected(row.photo_id).status
        if ln.fate != "noexif":
            assert row.meta["capture_device"] == world.pool.devices[ln.pool]
        assert ("line_number" in row.meta) == (layout == 25)
    assert Counter(r["fate"] for r in truth) == Counter({k: v for k, v in summary["fates"].items() if v})


def test_side_file_agrees_with_the_served_exif(world, files, tmp_path):
    index = YfccExifIndex.build(str(files.exif), str(tmp_path / "exif.sqlite"))
    photos = [ln for ln in world.lines() if not ln.video]
    assert len(index) == sum(ln.fate != "noexif" for ln in photos)
    for fate in ("ok", "duplicate", "gone404"):
        ln = first_of(world, fate)
        image = read_exif(world.photo_bytes(ln))
        assert index.get(str(ln.photo_id)) == image and len(image) >= 10
    assert index.get(str(first_of(world, "noexif").photo_id)) is None
    assert any("Exif+Thumbnail.Compression:" in items for items in world.pool.side_items)


# -- the hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize("fate", [f for f in FATES if f not in ("retry429", "stall")])
def test_served_fate_matches_the_truth(world, sim, fate):
    ln = first_of(world, fate)
    if fate == "cut":  # the whole length announced, half sent, the connection closed
        for original in (True, False):
            with pytest.raises(http.client.IncompleteRead):
                _OPENER.open(sim.url(ln.photo_id, original), timeout=5).read()
        return
    code, headers, body, final = fetch(sim.url(ln.photo_id))
    listed = fetch(sim.url(ln.photo_id, original=False))
    exp = world.expected(ln.photo_id)
    image = code == 200 and headers["Content-Type"] == "image/jpeg"
    if exp.status == st.HTTP_ERROR:
        assert code == listed[0] == exp.http_status and not image
    elif fate == "retry503":
        assert code == 503 and fetch(sim.url(ln.photo_id))[2] == world.photo_bytes(ln)
    elif fate == "fallback":
        assert code == 404 and listed[0] == 200 and listed[2] == world.photo_bytes(ln, "r")
    elif fate == "redirect":
        assert final == f"http://{host_of(world.redirect_farm(ln))}:{sim.port}/moved/{ln.photo_id}.jpg"
        assert image and body == world.photo_bytes(ln)
    elif fate == "html":
        assert code == 200 and headers["Content-Type"].startswith("text/html") and b"<html>" in body
    else:  # ok, short, optout, duplicate, noexif: an image, its bytes as the world says
        assert image and body == world.photo_bytes(ln) and exp.http_status == 200
    assert ("X-Robots-Tag" in headers) == (fate == "optout")
    if fate == "optout":
        assert headers["X-Robots-Tag"] == "noai, noimageai" and exp.status == "opted_out"
        assert world.expected(ln.photo_id, honour_opt_out=False).status == st.SUCCESS


def test_retry_after_then_success_and_early_retries_counted(world, sim):
    ln = first_of(world, "retry429")
    code, headers, _, _ = fetch(sim.url(ln.photo_id))
    assert code == 429 and headers["Retry-After"] == "1"
    assert fetch(sim.url(ln.photo_id))[0] == 429  # too early: still refused
    time.sleep(1.05)
    code, _, body, _ = fetch(sim.url(ln.photo_id))
    assert code == 200 and body == world.photo_bytes(ln)
    host = sim.stats()[host_of(ln.farm)]
    assert host["early_retries"] == 1 and host["sent_429"] == 2 and host["throttled_429"] == 0


def test_stall_holds_until_the_client_hangs_up(world, sim):
    ln = first_of(world, "stall")
    url = sim.url(ln.photo_id).replace(host_of(ln.farm), host_of(5))  # paths work on any host
    results: list[BaseException] = []

    def one() -> None:
        try:
            _OPENER.open(url, timeout=0.6).read()
        except Exception as exc:  # noqa: BLE001 - the timeout is the point
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all("timed out" in str(e) for e in results)
    assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 2
    while sim.stats()[host_of(5)]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    host = sim.stats()[host_of(5)]
    assert host["in_flight"] == 0 and host["max_in_flight"] == 3 and host["requests"] == 3
    assert host["codes"] == {"0": 3}  # no status line was ever sent


def test_per_host_counters_and_stats_endpoint(world, sim):
    farm_ok = [ln for ln in world.lines() if not ln.video and ln.fate == "ok"]
    one = next(ln for ln in farm_ok if ln.farm == 2)
    t0 = time.monotonic()
    for _ in range(3):
        assert fetch(sim.url(one.photo_id))[0] == 200
    assert fetch(f"http://{host_of(2)}:{sim.port}/no/such/path.jpg")[0] == 404
    fast = time.monotonic() - t0 < 0.9
    stats = sim.stats()
    h2 = stats[host_of(2)]
    assert h2["requests"] == 4 and h2["codes"] == {"200": 3, "404": 1}
    assert h2["max_in_flight"] == 1 and h2["connections"] == 4 and sum(h2["per_second"]) == 4
    assert (h2["max_rps"] == 4 or not fast) and h2["bytes_sent"] > 3 * len(world.photo_bytes(one))
    assert all(stats[host_of(f)]["requests"] == 0 for f in (1, 3, 4, 5, 6, 7, 8, 9))
    code, _, body, _ = fetch(sim.stats_url)
    assert code == 200 and json.loads(body)[host_of(2)]["requests"] == 4  # not counted itself
    sim.reset_stats()
    assert sim.stats()[host_of(2)]["requests"] == 0


def test_throttled_host_refuses_bursts(world, sim):
    cfg = world.config
    assert 3 in cfg.throttle_farms and 2 not in cfg.throttle_farms
    ln = next(ln for ln in world.lines() if not ln.video and ln.fate == "ok")
    path = sim.url(ln.photo_id).split(str(sim.port), 1)[1]
    n = int(cfg.throttle_rate) + 10
    for farm in (2, 3):
        conn = http.client.HTTPConnection(host_of(farm), sim.port, timeout=5)
        t0 = time.monotonic()
        codes = []
        for _ in range(n):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            codes.append(resp.status)
        fast = time.monotonic() - t0 < 0.9  # all inside one second (a loaded box may not be)
        conn.close()
        host = sim.stats()[host_of(farm)]
        assert host["requests"] == n and (host["max_rps"] == n or not fast)
        if farm == 2:
            assert codes == [200] * n and host["throttled_429"] == 0
        else:
            assert codes[: int(cfg.throttle_rate)] == [200] * int(cfg.throttle_rate)
            assert host["throttled_429"] == codes.count(429) >= (10 if fast else 1)


# -- a crawl of the simulated world by the pipeline ----------------------------------------


@pytest.mark.integration
def test_pipeline_crawl_matches_the_ground_truth(tmp_path):
    world = SimWorld(
        SimConfig(
            n_rows=220,
            seed=7,
            shares=TEST_SHARES,
            pool_size=12,
            stall_seconds=20.0,
            retry_after=1.0,
            throttle_concurrency=4,
            throttle_rate=20.0,
        )
    )
    with YfccSimulator(world, lifetime=180) as sim:
        files = write_files(world, tmp_path / "world", sim.port, layouts=("2016",))
        out = tmp_path / "shards"
        cmd = [
            sys.executable,
            "-m",
            "exiflang",
            "shards",
            "--source",
            str(files.dataset_2016),
            "--yfcc-exif",
            str(files.exif),
            "--yfcc-original-url",
            sim.original_url_template,
            "--out",
            str(out),
            "--executor",
            "local",
            "--rows-per-shard",
            "60",
            "--threads",
            "8",
            "--timeout",
            "1",
            "--retries",
            "1",
            # Polite below the throttled farms' limits (4 in flight, 20/s).
            "--per-host-concurrency",
            "2",
            "--per-host-rate",
            "10",
            "-q",
        ]
        env = dict(os.environ, RAY_AUTH_MODE="disabled")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
        stats = sim.stats()
    assert proc.returncode == 0, proc.stderr[-3000:]
    truth = {r["photo_id"]: r for r in pq.read_table(files.truth).to_pylist()}
    got = read_tables(out, ["photo_id", "source_index", "status", "http_status", "error"]).to_pylist()
    assert len(got) == len(truth) and {r["photo_id"] for r in got} == set(truth)  # 0 lost, 0 twice
    wrong = []
    for row in got:
        want = truth[row["photo_id"]]
        assert row["source_index"] == want["source_index"]
        if want["fate"] == "optout":
            # Opt-out is not honoured by the pipeline yet: the photo is kept as a success.  Once
            # it is, the status is opted_out; either is accepted until then.
            ok = row["status"] in (want["expected_status"], st.SUCCESS)
        else:
            ok = row["status"] == want["expected_status"] and (
                want["expected_http_status"] is None or row["http_status"] == want["expected_http_status"]
            )
        if not ok:
            wrong.append((want["fate"], want["expected_status"], row["status"], row["http_status"], row["error"]))
    assert not wrong, wrong[:10]
    assert {r["fate"] for r in truth.values()} == set(FATES)  # every fate was exercised
    # Politeness, from the server's side.  A stalled request leaves the server's in-flight count
    # when it notices the hang-up, a moment after the client's slot is free: one more allowed there.
    # Starts spaced 0.1 s apart can arrive closer on a loaded machine: 12 in a second, not 10.
    stalled = {r["host"] for r in truth.values() if r["fate"] == "stall"}
    for host, h in stats.items():
        assert h["throttled_429"] == 0 and h["early_retries"] == 0, (host, h)
        assert h["max_in_flight"] <= 2 + (host in stalled) and h["max_rps"] <= 12, (host, h)
    assert sum(h["requests"] for h in stats.values()) >= len(truth)
