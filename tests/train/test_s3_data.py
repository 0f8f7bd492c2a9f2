"""Shards from object storage (a real S3 server on loopback): training from s3:// equals training
from the same shards on disk, and reads keep their retry/timeout discipline through a real TCP
proxy that stalls or swallows connections."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from safetensors.torch import load_file

from exiflang.train.data.loader import DataConfig, build_loader
from exiflang.train.data.samples import open_shards
from exiflang.train.data.shard_store import ReadPolicy, store_for
from exiflang.train.main import main as train_main
from exiflang.train.tokenizer import build_tokenizer
from tests.s3_server import s3_env, s3_server, storage_options
from tests.train.conftest import HELDOUT, metrics, train_args

URL = "s3://exiflang/shards"


@pytest.fixture(scope="module")
def endpoint(tiny_shards: Path) -> Iterator[str]:
    """The loopback S3 server with the tiny shards uploaded under ``s3://exiflang/shards``."""
    with s3_server() as ep:
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(ep))
        for path in sorted(tiny_shards.iterdir()):
            fs.put_file(str(path), f"exiflang/shards/{path.name}")
        yield ep


class Proxy:
    """A loopback TCP proxy to ``port``: the next ``swallow`` connections are accepted and never
    answered; :meth:`stall` freezes every connection open now and swallows the next one (so the
    next request hangs whether or not the client reuses a connection)."""

    def __init__(self, port: int, swallow: int = 0) -> None:
        self.port, self.swallow = port, swallow
        self.frozen: set[socket.socket] = set()
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(client)
            if self.swallow > 0:
                self.swallow -= 1
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                while a in self.frozen or b in self.frozen:
                    time.sleep(0.05)  # stalled: hold the bytes until the test closes us
                    if self.sock.fileno() < 0:
                        return
                b.sendall(data)
        except OSError:
            return

    def stall(self) -> None:
        self.frozen.update(self.conns)
        self.swallow += 1

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """This process (and the DataLoader workers it forks) reaches ``endpoint`` as its S3."""
    for key, value in s3_env(endpoint).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)


def test_training_from_s3_equals_training_from_disk(endpoint, monkeypatch, heldout_run, tmp_path):
    """Same seed, one process, a forked DataLoader worker, held-out set on S3 too: every logged
    loss, every held-out number and the final weights are those of the run from local disk."""
    _use_s3(monkeypatch, endpoint)
    run = tmp_path / "s3"
    assert train_main(train_args(URL, run, *HELDOUT, eval_data=URL)) == 0
    local, remote = metrics(heldout_run), metrics(run)
    keep = ("step", "loss", "lr", "epoch", "skipped_samples")
    assert [{k: r[k] for k in keep if k in r} for r in local if "loss" in r] == [
        {k: r[k] for k in keep if k in r} for r in remote if "loss" in r
    ]
    held = [{k: v for k, v in r.items() if k.startswith("eval/") or k == "step"} for r in local if "eval/loss" in r]
    assert held == [
        {k: v for k, v in r.items() if k.startswith("eval/") or k == "step"} for r in remote if "eval/loss" in r
    ]
    a, b = (
        load_file(str(heldout_run / "model" / "model.safetensors")),
        load_file(str(run / "model" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert (run / "model" / "tags.json").read_text() == (heldout_run / "model" / "tags.json").read_text()


def test_a_stalled_stream_is_reopened_at_its_offset(endpoint, tiny_shards):
    """A tar read in 64 kB pieces; half-way every open connection freezes: the read that hangs
    times out, the file is reopened at the same byte and the bytes come out whole."""
    proxy = Proxy(_port(endpoint))
    try:
        store = store_for(URL, ReadPolicy(attempts=3, timeout_s=1.0, backoff_s=0.05), storage_options(proxy.endpoint))
        store.block_size = 1 << 17
        want, got = (tiny_shards / "00000.tar").read_bytes(), bytearray()
        with store.open("00000.tar") as fh:
            while piece := fh.read(1 << 16):
                got += piece
                if not proxy.frozen and len(got) >= len(want) // 2:
                    proxy.stall()
        assert bytes(got) == want
        assert proxy.frozen, "the proxy never stalled a connection"
    finally:
        proxy.close()


def test_swallowed_connections_are_retried(endpoint):
    proxy = Proxy(_port(endpoint), swallow=2)
    try:
        shards = open_shards(
            URL, ReadPolicy(attempts=4, timeout_s=0.5, backoff_s=0.05), storage_options(proxy.endpoint)
        )
        assert shards.names == ("00000.tar", "00001.tar", "00002.tar") and sum(shards.sizes) == 24
        assert proxy.accepted >= 3
    finally:
        proxy.close()


def test_an_endpoint_that_never_answers_fails_in_bounded_time_with_one_line(endpoint, tmp_path, monkeypatch, capsys):
    proxy = Proxy(_port(endpoint), swallow=10**6)
    try:
        _use_s3(monkeypatch, proxy.endpoint)
        t0 = time.perf_counter()
        rc = train_main(train_args(URL, tmp_path / "r", "data.read_attempts=2", "data.read_timeout=0.5", "run.steps=1"))
        took = time.perf_counter() - t0
    finally:
        proxy.close()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert URL in err and "failed after 2 attempts" in err and "no answer in 0.5 s" in err
    assert took < 10, took  # 2 tries of 0.5 s and one 0.5 s backoff, plus start-up


def test_a_file_url_gives_the_batches_of_the_folder(tiny_shards):
    tok = build_tokenizer("bert-uncased", max_length=256)

    def batches(data: str) -> list[dict]:
        cfg = DataConfig(
            data=data,
            batch_size=8,
            patch_size=64,
            crops_per_image=2,
            shuffle_buffer=16,
            num_workers=0,
            text_format="shuffled",
        )
        return list(build_loader(cfg, tok, start_batch=2))  # a resume: replay, then lazy re-reads

    local, url = batches(str(tiny_shards)), batches(f"file://{tiny_shards}")
    assert len(local) == len(url) == 4
    for a, b in zip(local, url):
        assert a["keys"] == b["keys"] and a["texts"] == b["texts"] and a["images"].equal(b["images"])


def test_missing_bucket_prefix_is_one_line(endpoint, tmp_path, monkeypatch, capsys):
    _use_s3(monkeypatch, endpoint)
    assert train_main(train_args("s3://exiflang/nothing-here", tmp_path / "r", "run.steps=1")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "s3://exiflang/nothing-here: no shards (*.tar)" in err
