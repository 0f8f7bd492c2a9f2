"""Fixtures of the service tests: the tiny model + index, and real `exiflang serve` processes on loopback.

Every server is the real command (``python -m exiflang serve``) in a subprocess on a free
127.0.0.1 port (``--port 0``: the command prints the port it got), stopped at the end of the
session.  The model is the tiny random-init ``cpu-small`` set-up of tests/eval/lookup_fixtures.py
(model folder + index, ~10 s): the service's plumbing, limits and page do not need a trained model.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
URL_LINE = re.compile(r"exiflang serve: (http://127\.0\.0\.1:\d+)/")


@dataclass
class Server:
    """A running `exiflang serve`: its base URL, process and stderr log."""

    url: str
    proc: subprocess.Popen
    log: Path

    def get(self, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
        """GET ``path``: (status, headers, body) - errors included, never raised."""
        return request(self.url + path, token=token)

    def post(
        self, path: str, body: bytes, content_type: str, token: str | None = None, headers: dict | None = None
    ) -> tuple[int, dict, bytes]:
        return request(self.url + path, body, {"Content-Type": content_type, **(headers or {})}, token)

    def upload(
        self, path: str, data: bytes, filename: str = "photo.jpg", fields: dict | None = None, token: str | None = None
    ) -> tuple[int, dict, bytes]:
        body, ctype = multipart(data, filename, fields or {})
        return self.post(path, body, ctype, token)


def request(
    url: str, body: bytes | None = None, headers: dict | None = None, token: str | None = None, timeout: float = 300
) -> tuple[int, dict, bytes]:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def multipart(data: bytes, filename: str, fields: dict) -> tuple[bytes, str]:
    """A multipart/form-data body with the photo as ``file`` and text ``fields``."""
    boundary = "exiflangtestboundary7f3a"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def start_server(
    model: Path, log: Path, *args: str, index: Path | None = None, env: dict | None = None, wait: float = 180
) -> Server:
    """Start `exiflang serve --port 0 ARGS` and wait until /v1/health answers."""
    cmd = [sys.executable, "-m", "exiflang", "serve", "--model", str(model), "--port", "0", "--threads", "1", *args]
    if index is not None:
        cmd += ["--index", str(index)]
    out = log.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        match = URL_LINE.search(log.read_text())
        if match:
            server = Server(match.group(1), proc, log)
            try:
                if server.get("/v1/health")[0] == 200:
                    return server
            except OSError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"exiflang serve exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"exiflang serve did not start in {wait} s: {log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:  # a detection still running past its deadline would keep it alive: no need to wait
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny random-init model, its index and photos (tests/eval/lookup_fixtures.py)."""
    from tests.eval import lookup_fixtures

    return lookup_fixtures.build(tmp_path_factory.mktemp("serve_tiny"))


@pytest.fixture(scope="session")
def big_photo(tiny) -> bytes:
    """One of the tiny set-up's test photos (a real JPEG with EXIF, 256-320 px wide): ~1000
    patches, the slow request of the queue test."""
    return sorted(tiny.test_photos.glob("*.jpg"))[0].read_bytes()


@pytest.fixture(scope="session")
def photo(big_photo) -> bytes:
    """Its 132 x 132 centre with the same EXIF: a splice grid of 9 x 9 patches of 124 px, so a
    detection takes a fraction of the big photo's time (the plumbing tests need no more)."""
    img = Image.open(io.BytesIO(big_photo))
    w, h = img.size
    buf = io.BytesIO()
    img.crop(((w - 132) // 2, (h - 132) // 2, (w + 132) // 2, (h + 132) // 2)).save(
        buf, "JPEG", quality=92, exif=img.info["exif"]
    )
    return buf.getvalue()


def _served(tiny, tmp_path_factory, name: str, *args: str, index: bool = True) -> Iterator[Server]:
    server = start_server(
        tiny.model, tmp_path_factory.mktemp(name) / "serve.log", *args, index=tiny.index if index else None
    )
    try:
        yield server
    finally:
        stop(server.proc)


@pytest.fixture(scope="session")
def server(tiny, tmp_path_factory) -> Iterator[Server]:
    """Default limits, 2 workers, the index loaded."""
    yield from _served(tiny, tmp_path_factory, "serve_main", "--workers", "2", "--queue", "4")


@pytest.fixture(scope="session")
def tight(tiny, tmp_path_factory) -> Iterator[Server]:
    """One worker, no queue, 1 MB uploads, no index: the second concurrent request is refused."""
    yield from _served(
        tiny, tmp_path_factory, "serve_tight", "--concurrency", "1", "--queue", "0", "--max-upload-mb", "1", index=False
    )


TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="session")
def guarded(tiny, tmp_path_factory) -> Iterator[Server]:
    """A token and a deadline far below one detection."""
    yield from _served(tiny, tmp_path_factory, "serve_guarded", "--token", TOKEN, "--deadline", "0.05", index=False)


def as_json(body: bytes) -> dict:
    return json.loads(body.decode("utf-8"))
