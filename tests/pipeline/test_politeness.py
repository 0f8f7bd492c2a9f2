"""Host-wide politeness: per-host limits and pauses that hold for the whole job, across threads,
processes and Ray workers, asserted from the loopback servers' side; Retry-After of minutes with
a fake clock; X-Robots-Tag opt-outs."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.fetch.download import DownloadConfig, Downloader
from exiflang.pipeline.fetch.governor_service import GovernorServer, GovernorUnavailable, RemoteGovernor
from exiflang.pipeline.fetch.opt_out import agent_token, opt_out
from exiflang.pipeline.fetch.politeness import ANSWERED, THROTTLED, GovernorLimits, HostGovernor, Paused
from exiflang.pipeline.shards.files import read_tables
from tests.http_server import LoopbackServer

_KEYS = itertools.count()


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> str:
    return sorted(p.name for p in photos_dir.glob("*.jpg"))[0]


@pytest.fixture()
def host_a(photos_dir: Path):
    with LoopbackServer(photos_dir, host="127.0.0.1") as srv:
        yield srv


@pytest.fixture()
def host_b(photos_dir: Path):
    with LoopbackServer(photos_dir, host="127.0.0.2") as srv:
        yield srv


def _build(tmp_path: Path, urls: list[str], *args: str, name: str = "o") -> dict[str, dict]:
    """Run `exiflang shards` on ``urls``; the table's rows by URL."""
    lst = tmp_path / f"{name}.txt"
    lst.write_text("\n".join(urls) + "\n")
    out = tmp_path / name
    rc = shards_main(["--source", str(lst), "--out", str(out), "--timeout", "5", "-q", *args])
    assert rc == 0
    return {r["url"]: r for r in read_tables(out).to_pylist()}


def _held_urls(srv: LoopbackServer, photo: str, n: int, delay: float = 0.05) -> list[str]:
    return [srv.url(f"/held?delay={delay}&file={photo}&i={i}&k={next(_KEYS)}") for i in range(n)]


# ---- concurrency and rate, job-wide ------------------------------------------------------


@pytest.mark.ray
def test_host_cap_holds_across_two_ray_workers(tmp_path, host_a, photo):
    # 2 workers x 4 threads could put 8 requests in flight; the job-wide cap is 2.
    urls = _held_urls(host_a, photo, 32)
    rows = _build(
        tmp_path, urls, "--workers", "2", "--threads", "4", "--rows-per-shard", "8", "--per-host-concurrency", "2"
    )
    assert [rows[u]["http_status"] for u in urls] == [200] * len(urls)
    assert host_a.held_max == 2


def test_host_cap_holds_across_two_local_processes(tmp_path, host_a, photo):
    common = ["--executor", "local", "--workers", "2", "--threads", "4", "--rows-per-shard", "8"]
    urls = _held_urls(host_a, photo, 32)
    rows = _build(tmp_path, urls, *common, "--per-host-concurrency", "2")
    assert [rows[u]["http_status"] for u in urls] == [200] * len(urls)
    assert host_a.held_max == 2
    # The same job without a cap does put more in flight: the assertion above can fail.
    host_a.reset_stats()
    _build(tmp_path, _held_urls(host_a, photo, 32), *common, "--per-host-concurrency", "0", name="free")
    assert host_a.held_max > 2


def test_host_rate_holds_across_two_local_processes(tmp_path, host_a, photo):
    rate, n = 5.0, 10
    urls = [host_a.url(f"/files/{photo}?i={i}&k={next(_KEYS)}") for i in range(n)]
    _build(
        tmp_path,
        urls,
        "--executor",
        "local",
        "--workers",
        "2",
        "--threads",
        "4",
        "--rows-per-shard",
        "5",
        "--per-host-rate",
        str(rate),
    )
    starts = sorted(t for t, _ in host_a.log)
    # Arrival times jitter with the machine's load (a start scheduled on time can reach the
    # server late and bunch with the next one), so the rate is judged as the server sees it:
    # no 1-s window holds more than rate + 1 arrivals, and the whole run is not faster than
    # the rate allows.  Without the job-wide schedule, 2 processes x 4 threads send all 10 at once.
    in_window = [sum(t <= u < t + 1.0 for u in starts) for t in starts]
    assert len(starts) == n and max(in_window) <= rate + 1, [round(t - starts[0], 3) for t in starts]
    assert starts[-1] - starts[0] >= (n - 1) / rate - 0.3


# ---- pauses ------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["32", "0"])  # 0: no cap, no rate: the workers read pauses off the board
def test_429_pauses_its_host_for_every_worker_while_another_host_goes_on(tmp_path, host_a, host_b, photo, cap):
    # Host A's 4th request, whichever worker sends it, is told to wait 2 s; two processes
    # fetch from A, a third from B.  From A's side: nothing arrives during the pause.
    pause = 2.0
    storm = [host_a.url(f"/storm?at=4&retry_after={pause:g}&file={photo}&i={i}") for i in range(16)]
    other = _held_urls(host_b, photo, 24, delay=0.2)
    rows = _build(
        tmp_path,
        storm + other,
        "--executor",
        "local",
        "--workers",
        "3",
        "--threads",
        "2",
        "--rows-per-shard",
        "8",
        "--retries",
        "2",
        "--per-host-concurrency",
        cap,
    )
    assert all(rows[u]["status"] != st.HTTP_ERROR for u in storm + other), rows
    log_a = sorted(host_a.log)
    t429 = log_a[3][0]  # the 4th arrival got the 429
    during = [t for t, _ in log_a if t429 + 0.1 < t < t429 + pause - 0.1]
    assert during == [], [round(t - t429, 3) for t, _ in log_a]
    assert any(t >= t429 + pause - 0.1 for t, _ in log_a)  # and A was asked again after it
    assert len([t for t, _ in host_b.log if t429 + 0.1 < t < t429 + pause - 0.1]) >= 3
    assert sum(r["attempts"] for u, r in rows.items() if u in storm) == len(storm) + 1


class FakeClock:
    """The governor's time, advanced by its own waits: minutes pass in microseconds."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def wait(self, cond: threading.Condition, seconds: float) -> None:
        self.t += max(0.0, seconds)


@pytest.mark.parametrize("header, paused", [("300", 300.0), ("3600", 600.0), ("date+1200", 600.0)])
def test_retry_after_of_minutes_is_honoured_up_to_the_max(host_a, photo, header, paused):
    clock = FakeClock()
    gov = HostGovernor(GovernorLimits(retry_after_max=600.0), clock=clock)
    query = f"retry_date={header.split('+')[1]}" if header.startswith("date") else f"retry_after={header}"
    url = host_a.url(f"/429?{query}&times=1&file={photo}&key={next(_KEYS)}")
    t0, start = time.perf_counter(), clock.t
    with Downloader(DownloadConfig(timeout=5.0, retries=1), governor=gov) as dl:
        res = dl.fetch(url)
    assert (res.status, res.attempts) == (st.SUCCESS, 2), res
    assert paused - 2.0 <= clock.t - start <= paused + 1.0  # the host's word, or the cap
    assert time.perf_counter() - t0 < 5.0  # and no real waiting


def test_repeated_429s_without_retry_after_back_off_exponentially():
    clock = FakeClock()
    gov = HostGovernor(GovernorLimits(concurrency=8, retry_after_max=600.0, pause_base=1.0), clock=clock)
    pauses = []
    for _ in range(12):
        leases = [gov.acquire("h", 1, 60.0, 1e6) for _ in range(4)]  # 4 in flight together
        for lease in leases:  # all four throttled
            gov.release(lease, THROTTLED)
        pauses.append(gov.paused_for("h"))
        clock.t += pauses[-1]
    # One doubling per storm, not per throttled request; capped at retry_after_max.
    assert pauses == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]
    gov.release(gov.acquire("h", 1, 60.0, 1.0), ANSWERED)  # a normal answer resets
    lease = gov.acquire("h", 1, 60.0, 1.0)
    gov.release(lease, THROTTLED)
    assert gov.paused_for("h") == 1


def test_lapsed_and_disconnected_leases_come_back():
    clock = FakeClock()
    gov = HostGovernor(GovernorLimits(concurrency=1), clock=clock)
    assert gov.acquire("h", 1, 30.0, 1.0) is not None
    assert gov.acquire("h", 2, 30.0, 1.0) is None  # full
    clock.t += 31.0  # the first holder never gave it back
    assert gov.acquire("h", 2, 30.0, 1.0) is not None
    with GovernorServer(HostGovernor(GovernorLimits(concurrency=1))) as srv:
        client = RemoteGovernor(srv.address, srv.key, GovernorLimits())
        assert client.acquire("h", 0, 60.0, 1.0) > 0
        client.close()  # a worker gone mid-request
        other = RemoteGovernor(srv.address, srv.key, GovernorLimits())
        assert other.acquire("h", 0, 60.0, 5.0) > 0
        other.close()
    with pytest.raises(GovernorUnavailable, match="unreachable"):
        RemoteGovernor(srv.address, srv.key, GovernorLimits())


def test_lost_governor_falls_back_to_a_share_of_the_limits():
    srv = GovernorServer(HostGovernor(GovernorLimits(concurrency=4)))
    client = RemoteGovernor(srv.address, srv.key, GovernorLimits(concurrency=4), share=2)
    client.release(client.acquire("h", 0, 60.0, 1.0), ANSWERED)
    srv.close()
    first, second = client.acquire("h", 0, 60.0, 0.2), client.acquire("h", 0, 60.0, 0.2)
    assert first < 0 and second < 0  # granted locally: 4 // 2 slots
    assert client.acquire("h", 0, 60.0, 0.2) is None
    client.release(first, ANSWERED)
    client.close()


class _Counting(HostGovernor):
    """A governor that counts the calls it gets."""

    def __init__(self, limits: GovernorLimits) -> None:
        super().__init__(limits)
        self.calls: list[tuple] = []

    def acquire(self, host, owner, hold, wait_max, unless_paused=False):  # type: ignore[override]
        self.calls.append(("acquire", host))
        return super().acquire(host, owner, hold, wait_max, unless_paused)

    def report(self, host, outcome, epoch, retry_after=None):  # type: ignore[override]
        self.calls.append(("report", host, outcome))
        super().report(host, outcome, epoch, retry_after)


def _settled(gov: _Counting, n: int) -> None:
    """Reports carry no reply: wait until the server has handled ``n`` calls."""
    deadline = time.monotonic() + 5
    while len(gov.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(gov.calls) == n, gov.calls


def test_uncapped_job_reads_pauses_off_the_board_and_reports_only_changes():
    free = GovernorLimits(concurrency=0, rate=0, pause_base=0.3)
    gov = _Counting(free)
    with GovernorServer(gov) as srv:
        assert srv.board is not None
        a = RemoteGovernor(srv.address, srv.key, free, 2, str(srv.board.path))
        b = RemoteGovernor(srv.address, srv.key, free, 2, str(srv.board.path))
        for _ in range(5):  # unpaused host, plain answers: not one message
            a.release(a.acquire("h", 0, 60.0, 1.0), ANSWERED)
        assert gov.calls == []
        a.release(a.acquire("h", 0, 60.0, 1.0), THROTTLED, 0.5)  # a 429: reported, published
        _settled(gov, 1)
        paused = b.acquire("h", 0, 60.0, 1.0, unless_paused=True)  # the other worker sees it
        assert isinstance(paused, Paused) and 0.3 < paused.seconds <= 0.5
        assert gov.calls[-1] == ("acquire", "h")  # a paused host is the governor's to answer
        assert b.acquire("other", 0, 60.0, 1.0) >= 1 << 62  # other hosts go on unasked
        time.sleep(0.55)
        lease = b.acquire("h", 0, 60.0, 1.0)  # the pause is over: off the board again
        assert lease >= 1 << 62 and len(gov.calls) == 2
        b.release(lease, THROTTLED)  # no Retry-After: a strike; the next answer ends the run
        _settled(gov, 3)
        time.sleep(0.35)
        b.release(b.acquire("h", 0, 60.0, 1.0), ANSWERED)
        _settled(gov, 4)
        assert gov.calls[-1] == ("report", "h", ANSWERED) and srv.board.read("h")[2] == 0
        b.release(b.acquire("h", 0, 60.0, 1.0), ANSWERED)  # no strikes left: nothing to say
        time.sleep(0.1)
        assert len(gov.calls) == 4
        a.close()
        b.close()


def test_capped_jobs_and_ray_jobs_have_no_board():
    with GovernorServer(HostGovernor(GovernorLimits(concurrency=4))) as srv:
        assert srv.board is None
    with GovernorServer(HostGovernor(GovernorLimits(concurrency=0, rate=2.0))) as srv:
        assert srv.board is None
    with GovernorServer(HostGovernor(GovernorLimits(concurrency=0, rate=0)), "127.0.0.1") as srv:
        assert srv.board is None  # Ray workers may be on other machines


def test_pause_board_slots_tags_and_collisions(tmp_path):
    from exiflang.pipeline.fetch.pause_board import PauseBoard, _place

    board = PauseBoard.create(tmp_path / "b")
    reader = PauseBoard.open(tmp_path / "b")
    assert reader.read("never.example") == (0.0, 0, 0)
    board.write("x.example", 123.5, 7, 2)
    assert reader.read("x.example") == (123.5, 7, 2)
    by_slot: dict[int, str] = {}
    for i in range(100_000):  # two names in one slot (birthday bound: a few hundred names)
        host = f"farm{i}.example"
        slot = _place(host)[0]
        if slot in by_slot:
            break
        by_slot[slot] = host
    first, second = by_slot[slot], host
    board.write(first, 50.0, 1, 0)
    board.write(second, 60.0, 1, 0)  # the later writer owns the slot
    assert reader.read(second) == (60.0, 1, 0)
    assert reader.read(first) is None  # says nothing of the first: ask the governor
    with pytest.raises(TypeError):
        reader.write("y", 1.0, 1, 1)  # read-only for the workers
    reader.close()
    board.close()


# ---- opt-out -------------------------------------------------------------------------------


def test_opt_out_rows_and_the_flag_that_disables_it(tmp_path, host_a, photos_dir):
    tags = {
        "noai": st.OPTED_OUT,
        "noindex, nofollow": st.OPTED_OUT,
        "none": st.OPTED_OUT,
        "exiflang: noimageai": st.OPTED_OUT,
        "otherbot: noai": st.SUCCESS,
        "nofollow, noarchive": st.SUCCESS,
    }
    photos = sorted(p.name for p in photos_dir.glob("*.jpg"))  # one each: no duplicates
    urls = {t: host_a.url(f"/robots?tag={quote(t)}&file={photos[i]}") for i, t in enumerate(tags)}
    fallback = host_a.url(f"/files/{photos[0]}?fallback=1")
    common = ["--executor", "local", "--workers", "1", "--min-tags", "0"]
    rows = _build(tmp_path, list(urls.values()), *common)
    for tag, status in tags.items():
        row = rows[urls[tag]]
        assert row["status"] == status, (tag, row)
        if status == st.OPTED_OUT:
            assert row["error"] == f"opted out by X-Robots-Tag: {tag}" and row["http_status"] == 200
            assert row["bytes"] is None
    rows = _build(tmp_path, list(urls.values()), *common, "--ignore-opt-out", name="ignored")
    assert {rows[u]["status"] for u in urls.values()} == {st.SUCCESS}
    with Downloader(DownloadConfig(timeout=5.0)) as dl:  # the same photo elsewhere: not fetched
        res = dl.fetch(urls["noai"], [fallback])
    assert res.status == st.OPTED_OUT and host_a.target_hits[fallback[len(host_a.base_url) :]] == 0


def test_opt_out_header_reading():
    honoured = ("noai", "noimageai", "noindex", "noimageindex", "none")
    me = agent_token("exiflang/0.1 (+https://github.com/exiflang/exiflang; dataset builder)")
    assert me == "exiflang"
    assert opt_out(["NoAI"], honoured, me) == "X-Robots-Tag: NoAI"
    assert opt_out(["googlebot: noindex", "otherbot: noai"], honoured, me) is None
    assert opt_out(["googlebot: nofollow, EXIFLANG: noindex"], honoured, me)
    assert opt_out(["unavailable_after: 25 Jun 2010 15:00:00 PST"], honoured, me) is None
    assert opt_out(["max-image-preview: large, noimageai"], honoured, me)
    assert opt_out(["noai"], (), me) is None


def test_user_agent_names_the_project(host_a):
    with Downloader(DownloadConfig(timeout=5.0)) as dl:
        text = dl.fetch(host_a.url("/headers")).data.decode()
    assert "User-Agent: exiflang/" in text and "github.com/exiflang" in text
