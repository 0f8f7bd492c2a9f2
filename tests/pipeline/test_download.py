"""The downloader against the loopback server: statuses, errors, retries, limits and bytes."""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.fetch.download import DownloadConfig, Downloader, parse_retry_after, url_error
from exiflang.pipeline.fetch.host_limits import HostLimiter
from tests.http_server import LoopbackServer

FAST = dict(timeout=0.5, deadline=5.0, retries=2, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def server(photos_dir: Path):
    with LoopbackServer(photos_dir) as srv:
        yield srv


@pytest.fixture()
def srv(server: LoopbackServer) -> LoopbackServer:
    server.reset_stats()
    return server


@pytest.fixture()
def own_srv(photos_dir: Path):
    """A server of its own, for counts that requests left over by other tests would spoil."""
    with LoopbackServer(photos_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def photos(photos_dir: Path) -> list[str]:
    names = sorted(p.name for p in photos_dir.glob("*.jpg"))
    assert len(names) >= 4
    return names


def _dl(**kw) -> Downloader:
    return Downloader(DownloadConfig(**{**FAST, **kw}))


_KEYS = itertools.count()


def _key() -> str:
    """A fresh client key, so counted routes start from zero in every test."""
    return f"k{next(_KEYS)}"


# ---- bytes and connections -------------------------------------------------------------


def test_photos_identical_to_disk(srv, photos, photos_dir):
    with _dl() as dl:
        for name in photos[:4]:
            url = srv.url(f"/files/{name}")
            res = dl.fetch(url)
            assert (res.status, res.http_status, res.error, res.attempts) == (st.SUCCESS, 200, None, 1)
            assert res.url == res.final_url == url
            assert hashlib.sha256(res.data).hexdigest() == hashlib.sha256((photos_dir / name).read_bytes()).hexdigest()


def test_keep_alive_reuses_one_connection(srv, photos):
    with _dl() as dl:
        for i in range(8):
            assert dl.fetch(srv.url(f"/files/{photos[0]}?i={i}")).status == st.SUCCESS
        # error and redirect bodies are read, so those connections go back to the pool too
        dl.fetch(srv.url("/status/404"))
        dl.fetch(srv.url(f"/redirect?n=2&to=/files/{photos[1]}"))
        assert dl.fetch(srv.url(f"/files/{photos[0]}?i=x")).status == st.SUCCESS
    assert srv.connections == 1


def test_user_agent_and_identity_encoding(srv):
    with _dl(user_agent="exiflang-test/1") as dl:
        text = dl.fetch(srv.url("/headers")).data.decode()
    assert "User-Agent: exiflang-test/1" in text and "Accept-Encoding: identity" in text


def test_notimage_is_a_successful_download(srv):
    with _dl() as dl:
        res = dl.fetch(srv.url("/notimage"))
    assert res.status == st.SUCCESS and res.data.startswith(b"<!DOCTYPE html>")


# ---- HTTP errors and retries -----------------------------------------------------------


def test_404_is_not_retried(srv):
    with _dl(retries=3) as dl:
        res = dl.fetch(srv.url("/status/404"))
    assert (res.status, res.http_status, res.error, res.attempts) == (st.HTTP_ERROR, 404, "HTTP 404 Not Found", 1)
    assert res.data is None and srv.hits["/status/404"] == 1


def test_500_is_retried_then_reported(srv):
    with _dl(retries=2) as dl:
        res = dl.fetch(srv.url("/status/500"))
    assert (res.status, res.http_status, res.attempts) == (st.HTTP_ERROR, 500, 3)
    assert res.error == "HTTP 500 Internal Server Error (after 3 attempts)"
    assert srv.hits["/status/500"] == 3


def test_flaky500_recovers(srv, photos, photos_dir):
    with _dl(retries=3) as dl:
        res = dl.fetch(srv.url(f"/flaky500?times=2&file={photos[0]}&key={_key()}"))
    assert (res.status, res.attempts, srv.hits["/flaky500"]) == (st.SUCCESS, 3, 3)
    assert res.data == (photos_dir / photos[0]).read_bytes()


def test_429_honours_retry_after(srv, photos):
    with _dl(retries=2, backoff_max=5.0) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(srv.url(f"/429?retry_after=0.4&times=1&file={photos[0]}&key={_key()}"))
        elapsed = time.perf_counter() - t0
    assert (res.status, res.attempts, srv.hits["/429"]) == (st.SUCCESS, 2, 2)
    assert 0.4 <= elapsed < 1.5  # waited as told (plus <= 10 % jitter), not the 0.01 s backoff


def test_429_retry_after_http_date(srv):
    with _dl(retries=1, backoff_max=2.0) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(srv.url(f"/429?retry_date=1&times=1&key={_key()}"))
    assert res.status == st.SUCCESS and res.attempts == 2
    assert time.perf_counter() - t0 < 2.5


def test_retry_after_capped_by_retry_after_max(srv):
    with _dl(retries=1, retry_after_max=0.1) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(srv.url(f"/429?retry_after=30&times=1&key={_key()}"))
    assert res.status == st.SUCCESS and time.perf_counter() - t0 < 1.0


def test_429_gives_up_after_retries(srv):
    with _dl(retries=1) as dl:
        res = dl.fetch(srv.url(f"/429?retry_after=0&times=5&key={_key()}"))
    assert (res.status, res.http_status, res.attempts) == (st.HTTP_ERROR, 429, 2)
    assert res.error.startswith("HTTP 429 Too Many Requests")


def test_backoff_is_capped(srv):
    with _dl(retries=4, backoff_base=10.0, backoff_max=0.05) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(srv.url("/status/500"))
    assert res.attempts == 5 and srv.hits["/status/500"] == 5
    assert time.perf_counter() - t0 < 1.0


def test_backoff_grows_exponentially_with_jitter():
    dl = Downloader(DownloadConfig(backoff_base=0.1, backoff_max=0.5))
    try:
        for retry, (lo, hi) in enumerate([(0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.25, 0.5), (0.25, 0.5)]):
            delays = [dl._backoff(retry) for _ in range(50)]
            assert lo <= min(delays) and max(delays) <= hi and len(set(delays)) > 1
    finally:
        dl.close()


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    ahead = parse_retry_after(formatdate(time.time() + 60, usegmt=True))
    assert 58 <= ahead <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait


# ---- timeouts, truncation, size --------------------------------------------------------


def test_slow_server_times_out(srv):
    with _dl(timeout=0.3, retries=1) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(srv.url("/slow?delay=3"))
    assert (res.status, res.attempts) == (st.TIMEOUT, 2)
    assert res.error.startswith("timed out after 2 attempts")
    assert time.perf_counter() - t0 < 1.5


def test_trickle_is_cut_by_deadline(srv):
    # Every byte arrives well within the read timeout; only the total bound can stop it.
    with _dl(timeout=0.5, deadline=0.4, retries=0) as dl:
        t0 = time.perf_counter()
        res = dl.fetch(srv.url("/trickle?size=1000&chunk=1&interval=0.05"))
    assert res.status == st.TIMEOUT and "deadline 0.4 s exceeded during the body" in res.error, res.error
    assert time.perf_counter() - t0 < 0.4 + 0.5 + 0.3


def test_body_stall_is_a_timeout(srv):
    with _dl(timeout=0.2, retries=0) as dl:
        res = dl.fetch(srv.url("/trickle?size=10&chunk=5&interval=1"))
    assert res.status == st.TIMEOUT and "body stalled for 0.2 s" in res.error, res.error


def test_short_trickle_completes(srv):
    with _dl() as dl:
        res = dl.fetch(srv.url("/trickle?size=20&chunk=4&interval=0.01"))
    assert res.status == st.SUCCESS and res.data == b"x" * 20


def test_truncated_body_fails_and_is_retried(srv, photos, photos_dir):
    with _dl(retries=1) as dl:
        res = dl.fetch(srv.url("/truncated?size=1000"))
        assert (res.status, res.attempts, srv.hits["/truncated"]) == (st.DOWNLOAD_FAILED, 2, 2)
        assert res.error == "body truncated: got 500 of 1000 bytes (after 2 attempts)"
        size = (photos_dir / photos[0]).stat().st_size
        res = dl.fetch(srv.url(f"/truncated?file={photos[0]}"))
        assert res.status == st.DOWNLOAD_FAILED and f"of {size} bytes" in res.error


@pytest.mark.parametrize("nolength", ["0", "1"])
def test_max_bytes(srv, nolength):
    with _dl(max_bytes=100_000) as dl:
        res = dl.fetch(srv.url(f"/big?size=300000&nolength={nolength}"))
        assert (res.status, res.attempts, res.data) == (st.DOWNLOAD_FAILED, 1, None)
        assert res.error.startswith("too large") and "100000" in res.error
        ok = dl.fetch(srv.url(f"/big?size=100000&nolength={nolength}"))
        assert ok.status == st.SUCCESS and len(ok.data) == 100_000


# ---- redirects, URLs, fallbacks ---------------------------------------------------------


def test_redirect_loop_detected_and_not_retried(srv):
    with _dl(retries=3) as dl:
        res = dl.fetch(srv.url("/redirect-loop"))
    assert (res.status, res.attempts, res.http_status) == (st.DOWNLOAD_FAILED, 1, 302)
    assert "redirect loop" in res.error and srv.hits["/redirect-loop"] == 2


def test_redirect_chain_and_limit(srv, photos, photos_dir):
    target = f"/files/{photos[0]}"
    with _dl(max_redirects=5) as dl:
        res = dl.fetch(srv.url(f"/redirect?n=5&to={quote(target)}"))
        assert res.status == st.SUCCESS and res.final_url == srv.url(target)
        assert res.data == (photos_dir / photos[0]).read_bytes()
        res = dl.fetch(srv.url(f"/redirect?n=6&to={quote(target)}"))
    assert res.status == st.DOWNLOAD_FAILED and res.error == "too many redirects (> 5)"


def test_redirect_to_unsupported_scheme(srv):
    with _dl() as dl:
        res = dl.fetch(srv.url(f"/redirect?to={quote('ftp://example.invalid/x.jpg', safe='')}"))
    assert res.status == st.DOWNLOAD_FAILED and res.error == "redirect to unsupported scheme 'ftp'"


def test_bad_urls_fail_without_a_request():
    with _dl() as dl:
        for url, msg in [
            ("ftp://example.invalid/x.jpg", "unsupported scheme 'ftp'"),
            ("file:///etc/passwd", "unsupported scheme 'file'"),
            ("", "no scheme"),
            ("http://", "no host"),
            ("http://[::1/x", "invalid URL"),
        ]:
            res = dl.fetch(url)
            assert (res.status, res.attempts) == (st.DOWNLOAD_FAILED, 0), url
            assert msg in res.error, (url, res.error)
    assert url_error("HTTPS://Example.com/a.jpg") is None


def test_connection_refused_is_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with _dl(retries=1) as dl:
        res = dl.fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert (res.status, res.attempts) == (st.DOWNLOAD_FAILED, 2)
    assert "connection failed" in res.error and "refused" in res.error.lower()


def test_fallback_used_when_first_fails(srv, photos, photos_dir):
    primary, fallback = srv.url("/status/404"), srv.url(f"/files/{photos[1]}")
    with _dl() as dl:
        res = dl.fetch(primary, [srv.url("/status/410"), fallback])
        assert (res.status, res.url, res.final_url, res.attempts) == (st.SUCCESS, primary, fallback, 3)
        assert res.data == (photos_dir / photos[1]).read_bytes()
        bad = dl.fetch(primary, [srv.url("/status/410"), "", primary])  # empty, repeated: skipped
        assert dl.fetch(fallback, [srv.url("/status/500")]).status == st.SUCCESS
    assert (bad.status, bad.http_status, bad.url) == (st.HTTP_ERROR, 404, primary)
    assert bad.error == "HTTP 404 Not Found; fallbacks: HTTP 410 Gone"
    assert srv.hits["/status/500"] == 0  # not tried when the first URL succeeds


# ---- per-host limits and threads ---------------------------------------------------------


def test_per_host_concurrency_never_exceeded(own_srv, photos, photos_dir):
    srv = own_srv
    with _dl(per_host_concurrency=3) as dl, ThreadPoolExecutor(12) as pool:
        urls = [srv.url(f"/slow?delay=0.03&file={photos[i % 4]}&i={i}") for i in range(24)]
        results = list(pool.map(dl.fetch, urls))
    assert all(r.status == st.SUCCESS for r in results)
    assert srv.max_in_flight == 3
    assert srv.connections <= 3  # the pool kept and reused one connection per slot
    for i, r in enumerate(results):
        assert r.data == (photos_dir / photos[i % 4]).read_bytes()


def test_per_host_rate_respected(srv):
    rate, n = 20.0, 8
    with _dl(per_host_rate=rate) as dl, ThreadPoolExecutor(8) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(dl.fetch, [srv.url(f"/notimage?i={i}") for i in range(n)]))
        elapsed = time.perf_counter() - t0
    assert all(r.status == st.SUCCESS for r in results)
    assert elapsed >= (n - 1) / rate * 0.95
    # Seen from the server, with slack for its own scheduling jitter: no bunching.
    starts = sorted(t for t, _ in srv.log)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.5 / rate and starts[-1] - starts[0] >= (n - 1) / rate - 0.03, gaps


def test_many_threads_share_one_downloader(own_srv, photos, photos_dir):
    srv = own_srv
    expected = {n: (photos_dir / n).read_bytes() for n in photos[:8]}
    names = [photos[i % 8] for i in range(96)]
    with _dl(per_host_concurrency=16) as dl, ThreadPoolExecutor(24) as pool:
        results = list(pool.map(dl.fetch, [srv.url(f"/files/{n}?i={i}") for i, n in enumerate(names)]))
    assert [r.data == expected[n] for r, n in zip(results, names)] == [True] * len(names)
    assert srv.max_in_flight <= 16


def test_close_cuts_backoff_short(srv):
    dl = _dl(retries=5, backoff_base=5.0, backoff_max=5.0)
    out = {}
    t = threading.Thread(target=lambda: out.update(res=dl.fetch(srv.url("/status/503"))))
    t0 = time.perf_counter()
    t.start()
    time.sleep(0.2)
    dl.close()
    t.join(3)
    assert not t.is_alive() and time.perf_counter() - t0 < 2.0
    assert out["res"].status == st.HTTP_ERROR


def test_host_limiter_caps_and_forgets_idle_hosts():
    lim = HostLimiter.local(concurrency=2)
    peak, now, lock = [0], [0], threading.Lock()

    def work(host: str) -> None:
        with lim.slot(host):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.01)
            with lock:
                now[0] -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, ["a"] * 16))
    assert peak[0] == 2
    assert len(lim) == 0 and lim.in_use("a") == 0


# ---- proxies from the environment ----------------------------------------------------------


def test_http_proxy_from_the_environment(monkeypatch, photos_dir, photos):
    # The loopback server as the proxy: it gets the absolute URL and serves its path.
    with LoopbackServer(photos_dir, host="127.0.0.2") as proxy, LoopbackServer(photos_dir) as direct:
        monkeypatch.setenv("http_proxy", proxy.base_url)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with _dl() as dl:
            via = dl.fetch(f"http://photos.example.invalid/files/{photos[0]}")
            bypass = dl.fetch(direct.url(f"/files/{photos[1]}"))
        assert via.status == st.SUCCESS and via.data == (photos_dir / photos[0]).read_bytes()
        assert [t for _, t in proxy.log] == [f"http://photos.example.invalid/files/{photos[0]}"]
        assert bypass.status == st.SUCCESS and direct.hits[f"/files/{photos[1]}"] == 1
