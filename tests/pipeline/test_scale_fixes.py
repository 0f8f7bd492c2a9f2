"""Two small robustness fixes: an interrupted shard cancels its queued rows; a photo id that is
not UTF-8 gets no side-file EXIF instead of stopping the job.  (A failed tar or table write
leaving no temporary file: tests/pipeline/test_storage_s3.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.fetch.download import DownloadConfig, Downloader
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.shards.worker import _window
from exiflang.pipeline.sources.open import open_source
from exiflang.pipeline.sources.yfcc_exif import YfccSideJoin
from tests.http_server import LoopbackServer


def test_interrupted_shard_does_not_run_its_queued_rows(tmp_path):
    """One fetch thread, a window of two: row 0 is running and row 1 queued when Ctrl-C
    arrives.  The queued row is cancelled; only the running one is waited for."""
    cfg = ShardConfig(threads=1, download=DownloadConfig(retries=0, timeout=10))
    with LoopbackServer(tmp_path) as server:
        rows = [SourceRow(index=i, url=server.url(f"/slow?delay=1&i={i}")) for i in range(4)]
        downloader = Downloader(cfg.download)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.perf_counter()
        try:
            with pytest.raises(KeyboardInterrupt):
                for _ in _window(cfg, downloader, {}).run(rows):
                    pass
        finally:
            timer.cancel()
            downloader.close()
        elapsed = time.perf_counter() - t0
        hits = sum(n for path, n in server.hits.items() if path.startswith("/slow"))
    assert hits == 1 and elapsed < 1.8, (hits, elapsed)


def test_non_utf8_photo_id_gets_no_side_exif(tmp_path):
    side = tmp_path / "yfcc100m_exif"
    side.write_text("7\tMake:Canon,Model:EOS\n8\tMake:Nikon\n")
    lst = tmp_path / "l.csv"
    lst.write_bytes(b"photo_id,url\n7,https://h/7.jpg\n\xff\xfe,https://h/x.jpg\n8,https://h/8.jpg\n")
    join = YfccSideJoin(str(side), str(tmp_path / "db.sqlite"))
    rows = list(join.rows(open_source(lst).rows()))
    assert [r.photo_id for r in rows] == ["7", "\udcff\udcfe", "8"]  # every row passes on
    assert join.counts["matched"] == 2
