"""One total deadline per attempt and per row: trickled headers or bodies, stalls and retries all
end as `timeout` rows in bounded time, against a real loopback server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.fetch.deadline import Deadline, applied, current, resolve
from exiflang.pipeline.fetch.download import DownloadConfig, Downloader, FetchResult
from exiflang.pipeline.shards.files import read_tables
from tests.http_server import LoopbackServer

SLACK = 5.0  # generous: a loaded 2-core machine; the unbounded behaviour took hundreds of seconds


@pytest.fixture()
def srv(photos_dir: Path):
    with LoopbackServer(photos_dir) as server:
        yield server


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> str:
    return sorted(p.name for p in photos_dir.glob("*.jpg"))[0]


def _fetch(url: str, fallbacks: tuple[str, ...] = (), **kw: float) -> tuple[FetchResult, float]:
    cfg = dict(timeout=3.0, deadline=2.0, retries=0, backoff_base=0.01, backoff_max=0.05)
    with Downloader(DownloadConfig(**{**cfg, **kw})) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(url, fallbacks)
        return res, time.perf_counter() - t0


def test_header_trickle_is_cut_at_the_deadline(srv, photo):
    # A keep-alive connection from a first fetch is reused: the pooled connection must obey the
    # new attempt's deadline too.  Each header byte comes 0.5 s apart, well inside timeout 3 s.
    with Downloader(DownloadConfig(timeout=3.0, deadline=2.0, retries=0)) as dl:
        assert dl.fetch(srv.url(f"/files/{photo}")).status == st.SUCCESS
        t0 = time.perf_counter()
        res = dl.fetch(srv.url("/trickle-headers?interval=0.5"))
        took = time.perf_counter() - t0
    assert res.status == st.TIMEOUT, res
    assert "deadline 2 s exceeded before the response headers" in res.error, res.error
    assert srv.connections == 1 and srv.hits["/trickle-headers"] == 1
    assert 1.9 <= took < 2.0 + SLACK


def test_body_trickle_is_cut_at_the_deadline(srv):
    res, took = _fetch(srv.url("/trickle?size=100000&chunk=1&interval=0.05"))
    assert res.status == st.TIMEOUT and "deadline 2 s exceeded during the body" in res.error, res.error
    assert 1.9 <= took < 2.0 + SLACK


def test_silent_server_is_cut_at_the_deadline(srv):
    # The request is read, then nothing comes back; the per-read timeout (10 s) is longer.
    res, took = _fetch(srv.url("/slow?delay=60"), timeout=10.0, deadline=1.5)
    assert res.status == st.TIMEOUT and "deadline 1.5 s exceeded" in res.error, res.error
    assert took < 1.5 + SLACK


def test_stalled_tls_handshake_is_cut_at_the_deadline():
    # The kernel completes the TCP handshake of a socket nobody accepts; TLS then waits forever.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        res, took = _fetch(f"https://127.0.0.1:{port}/x.jpg", timeout=10.0, deadline=1.5)
    assert res.status == st.TIMEOUT and "deadline 1.5 s exceeded" in res.error, res.error
    assert took < 1.5 + SLACK


def test_row_deadline_bounds_retries_and_fallbacks(srv, photo):
    trickle = srv.url("/trickle-headers?interval=0.3")
    res, took = _fetch(
        trickle, (trickle + "&b=1", srv.url(f"/files/{photo}")), deadline=1.0, retries=10, row_deadline=2.5
    )
    assert res.status == st.TIMEOUT and res.url == trickle, res
    assert 2 <= res.attempts <= 4, res
    assert "row deadline 2.5 s" in res.error and "2 not tried" in res.error, res.error
    assert took < 2.5 + SLACK


def test_time_queued_for_a_host_slot_is_not_charged(srv, photo):
    # One request per 2 s to a host: the second fetch waits ~2 s for its start, twice its own
    # row deadline, and still succeeds because queueing is politeness, not the server's time.
    cfg = DownloadConfig(timeout=3.0, deadline=1.0, row_deadline=1.0, retries=0, per_host_rate=0.5)
    with Downloader(cfg) as dl:
        assert dl.fetch(srv.url(f"/files/{photo}")).status == st.SUCCESS
        t0 = time.perf_counter()
        res = dl.fetch(srv.url(f"/files/{photo}?i=2"))
        waited = time.perf_counter() - t0
    assert res.status == st.SUCCESS, res
    assert waited > 1.5


def test_resolve_is_bounded():
    assert resolve("localhost", 80, 2.0)
    t0 = time.perf_counter()
    with pytest.raises(OSError):  # the resolver's own error, or our TimeoutError
        resolve("exiflang-test.invalid", 80, 0.5)
    assert time.perf_counter() - t0 < 0.5 + SLACK


def test_deadline_arithmetic_and_scope():
    outer = Deadline(5.0, "row deadline")
    inner = Deadline(60.0).within(outer)
    assert inner.label == "row deadline" and inner is not outer and inner.end == outer.end
    assert Deadline(1.0).within(outer).label == "deadline"
    assert current() is None
    with applied(inner):
        assert current() is inner
    assert current() is None
    spent = Deadline(1e-9)
    time.sleep(0.001)
    with pytest.raises(TimeoutError, match="deadline 1e-09 s exceeded"):
        spent.clamp(10.0)
    assert 0 < Deadline(9.0).clamp(0.5) <= 0.5


@pytest.mark.parametrize("field", ["timeout", "deadline", "row_deadline"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_bad_bounds_are_refused(field, value):
    with pytest.raises(ValueError, match=f"download {field} must be a positive"):
        DownloadConfig(**{field: value})


def test_cli_refuses_a_bad_deadline_in_one_line(tmp_path, capsys):
    lst = tmp_path / "urls.txt"
    lst.write_text("http://127.0.0.1:9/x.jpg\n")
    rc = shards_main(
        ["--source", str(lst), "--out", str(tmp_path / "o"), "--deadline", "0", "--executor", "local", "-q"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "deadline" in err[0], err


def test_shards_finish_with_a_trickling_url(tmp_path, srv, photos_dir):
    good = sorted(p.name for p in photos_dir.glob("*.jpg"))[:3]
    trickle = srv.url("/trickle-headers?interval=0.3")
    urls = [srv.url(f"/files/{n}") for n in good[:2]] + [trickle] + [srv.url(f"/files/{good[2]}")]
    lst = tmp_path / "urls.txt"
    lst.write_text("\n".join(urls) + "\n")
    out = tmp_path / "o"
    t0 = time.perf_counter()
    rc = shards_main(
        [
            "--source",
            str(lst),
            "--out",
            str(out),
            "--executor",
            "local",
            "--threads",
            "4",
            "--rows-per-shard",
            "8",
            "--timeout",
            "3",
            "--deadline",
            "1",
            "--retries",
            "5",
            "--row-deadline",
            "2",
            "-q",
        ]
    )
    took = time.perf_counter() - t0
    assert rc == 0
    table = {r["url"]: r for r in read_tables(out).to_pylist()}
    assert table[trickle]["status"] == st.TIMEOUT, table[trickle]
    assert "row deadline 2 s" in table[trickle]["error"], table[trickle]["error"]
    assert all(table[u]["status"] == st.SUCCESS for u in urls if u != trickle)
    assert not list(out.glob("*.tmp-*"))
    assert took < 2 + 3 * SLACK  # the run's own fixed costs (imports, tags, Parquet) included
