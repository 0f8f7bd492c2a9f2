"""`exiflang serve` over real HTTP on loopback: each endpoint, limits, errors, queue, token."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.serve.conftest import REPO, TOKEN, as_json, multipart, request

# Real `exiflang serve` processes on loopback (tests/serve/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One of each way a file from the fuzzing suite fails: no image format, a broken data stream,
# truncated pixel data, a header too large for its bytes, and a real image smaller than a patch.
BROKEN = [
    "138d3b9e0d9fbf641b8135981e597c3a.jpg",
    "3ba6af611cc5467cfdbd5566561b8478.jpg",
    "59d3b529c78ac722127c41ba75b3355b.jpg",
    "8e5e74dbf9b68a322fbb9512db837329.jpg",
    "3976a754ef0aca80e84e2c403d714579.jpg",
]


def _png(data_url: str) -> np.ndarray:
    head, _, b64 = data_url.partition(",")
    assert head == "data:image/png;base64", head
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_health_model_and_openapi(server):
    status, _, body = server.get("/v1/health")
    assert status == 200 and as_json(body)["status"] == "ok" and as_json(body)["index"] is True
    status, _, body = server.get("/v1/model")
    info = as_json(body)
    assert status == 200 and "card" in info["model"] and info["limits"]["workers"] == 2
    status, _, body = server.get("/openapi.json")
    paths = as_json(body)["paths"]
    assert {"/v1/detect", "/v1/lookup", "/v1/check-exif", "/v1/health", "/v1/model", "/v1/thumbnail/{row}"} <= set(
        paths
    )
    assert "multipart/form-data" in paths["/v1/detect"]["post"]["requestBody"]["content"]
    assert "image/jpeg" in paths["/v1/thumbnail/{row}"]["get"]["responses"]["200"]["content"]


def test_detect_answers_verdict_maps_and_files(server, photo):
    status, headers, body = server.upload("/v1/detect?preview=true", photo)
    assert status == 200, body
    out = as_json(body)
    det = out["detection"]
    assert det["verdict"] in {"spliced", "authentic", "inconclusive", "unknown"}
    assert isinstance(det["score"], float) and "percentile" in det
    heat = _png(out["maps"]["meanshift"])
    assert heat.dtype == np.uint8 and heat.ndim == 2 and list(heat.shape) == out["maps"]["size"]
    assert heat.max() > heat.min()  # a map, not a blank
    assert _png(out["maps"]["ncuts"]).shape == heat.shape
    preview = Image.open(io.BytesIO(base64.b64decode(out["preview"].partition(",")[2])))
    assert preview.size == (heat.shape[1], heat.shape[0])
    assert "default-src 'self'" in headers["content-security-policy"]

    status, headers, body = server.upload("/v1/detect?format=npz", photo)
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert zipfile.ZipFile(io.BytesIO(body)).namelist()
    status, headers, body = server.upload("/v1/detect?format=png", photo)
    assert status == 200 and Image.open(io.BytesIO(body)).format == "PNG"


def test_raw_body_upload(server, photo):
    status, _, body = server.post("/v1/detect?maps=false", photo, "image/jpeg")
    assert status == 200 and "maps" not in as_json(body)


def test_lookup_and_check_exif(server, photo):
    status, _, body = server.upload("/v1/lookup?k=3", photo)
    res = as_json(body)
    assert status == 200, body
    assert isinstance(res["known"], bool) and len(res["neighbours"]) == 3 and "votes" in res
    status, _, body = server.upload("/v1/check-exif", photo)
    chk = as_json(body)
    assert status == 200, body
    assert chk["verdict"] in {"consistent", "inconsistent", "inconclusive", "no-exif"}
    assert chk["claimed"] and isinstance(chk["per_tag"], list)
    claimed = {"Make": "Leica", "Model": "M11"}
    status, _, body = server.upload("/v1/check-exif", photo, fields={"exif": json.dumps(claimed)})
    assert status == 200, body
    assert as_json(body)["claimed"] == claimed
    status, _, body = server.upload("/v1/check-exif", photo, fields={"exif": "{not json"})
    assert status == 400 and "not JSON" in as_json(body)["error"]


def test_lookup_neighbours_have_thumbnails_served_as_jpegs(server, tiny, photo):
    rows = pd.read_parquet(tiny.index / "rows.parquet")
    status, _, body = server.upload("/v1/lookup?k=5", photo)
    assert status == 200, body
    neighbours = as_json(body)["neighbours"]
    assert len(neighbours) == 5 and as_json(server.get("/v1/model")[2])["index"]["thumbnails"] == len(rows)
    for n in neighbours:
        assert n["thumbnail"] == f"/v1/thumbnail/{n['row']}"
        status, headers, data = server.get(n["thumbnail"])
        assert status == 200 and headers["content-type"] == "image/jpeg", data[:200]
        thumb = Image.open(io.BytesIO(data))
        thumb.load()  # the whole stream decodes
        # The photo's own size (rows.parquet: width, height), shrunk to 128 px on its longer side.
        width, height = int(rows["width"][n["row"]]), int(rows["height"][n["row"]])
        scale = 128 / max(width, height)
        assert thumb.format == "JPEG" and thumb.size == (round(width * scale), round(height * scale)), thumb.size
        assert "private" in headers["cache-control"] and headers["etag"]
        assert request(server.url + n["thumbnail"], headers={"If-None-Match": headers["etag"]})[0] == 304
    status, _, body = server.get(f"/v1/thumbnail/{len(rows)}")
    assert status == 404 and f"has {len(rows)} rows" in as_json(body)["error"]
    assert server.get("/v1/thumbnail/-1")[0] == 422


def test_thumbnails_follow_the_index_and_token_rules(tight, guarded):
    status, _, body = tight.get("/v1/thumbnail/0")
    assert status == 409 and "--index" in as_json(body)["error"]
    assert guarded.get("/v1/thumbnail/0")[0] == 401
    assert guarded.get("/v1/thumbnail/0", token=TOKEN)[0] == 409


@pytest.mark.parametrize("name", BROKEN)
def test_broken_jpeg_is_a_readable_4xx(server, shared_data, name):
    data = (shared_data / "malformed" / name).read_bytes()
    status, _, body = server.upload("/v1/detect", data, filename=name)
    assert status == 422, (status, body)
    message = as_json(body)["error"]
    assert "photo" in message and "\n" not in message and "Traceback" not in message


def test_malformed_requests(server, photo):
    status, _, body = server.upload("/v1/detect", b"\x00" * 100)
    assert status == 422 and "cannot be used" in as_json(body)["error"]
    status, _, body = server.post("/v1/detect", photo, "text/plain")
    assert status == 415 and "multipart" in as_json(body)["error"]
    status, _, body = server.post("/v1/detect", b"--x\r\nbroken", "multipart/form-data; boundary=x")
    assert status == 400 and as_json(body)["error"]
    body, ctype = multipart(photo, "a.jpg", {})
    status, _, out = server.post("/v1/detect", body.replace(b'name="file"', b'name="other"'), ctype)
    assert status == 400 and "'file'" in as_json(out)["error"]
    status, _, body = server.upload("/v1/detect?max_side=3", photo)
    assert status == 422 and "max_side" in as_json(body)["error"]


def test_oversized_upload_is_413(tight):
    big = b"\xff" * (1024 * 1024 + 10)
    status, _, body = tight.upload("/v1/detect", big)
    assert status == 413 and "1 MB limit" in as_json(body)["error"]

    def chunks():  # no Content-Length: the cap is enforced while reading
        for _ in range(3):
            yield b"\xff" * (512 * 1024)

    status, _, body = request(
        tight.url + "/v1/detect", chunks(), {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}
    )
    assert status == 413 and "limit" in as_json(body)["error"]


def test_lookup_without_index_is_409(tight, photo):
    status, _, body = tight.upload("/v1/lookup", photo)
    assert status == 409 and "--index" in as_json(body)["error"]


def test_full_queue_is_503_with_retry_after(tight, big_photo, photo):
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(r=tight.upload("/v1/detect", big_photo)))
    worker.start()
    # Wait until the first request holds the only slot (a detection takes seconds), then ask again.
    deadline = time.monotonic() + 60
    while as_json(tight.get("/v1/health")[2])["running"] < 1:
        assert time.monotonic() < deadline and worker.is_alive(), "the first request never started"
        time.sleep(0.02)
    status, headers, body = tight.upload("/v1/detect", photo)
    assert status == 503, body
    assert int(headers["retry-after"]) >= 1 and "busy" in as_json(body)["error"]
    worker.join(120)
    assert first["r"][0] == 200
    assert tight.upload("/v1/detect", photo)[0] == 200  # the slot was given back


def test_concurrent_requests_all_succeed(server, photo):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: server.upload("/v1/lookup?k=2", photo), range(4)))
    assert [r[0] for r in results] == [200] * 4
    assert as_json(server.get("/v1/health")[2])["running"] == 0


def test_token_and_deadline(guarded, photo):
    assert guarded.get("/v1/health")[0] == 200  # liveness needs no token
    status, headers, body = guarded.get("/v1/model")
    assert status == 401 and headers["www-authenticate"] == "Bearer" and "token" in as_json(body)["error"]
    assert guarded.get("/v1/model", token="wrong-token-123")[0] == 401
    assert guarded.get("/v1/model", token=TOKEN)[0] == 200
    status, _, body = guarded.upload("/v1/detect", photo, token=TOKEN)
    assert status == 504 and "deadline" in as_json(body)["error"]


def test_non_loopback_host_needs_a_token(tiny):
    r = subprocess.run(
        [sys.executable, "-m", "exiflang", "serve", "--model", str(tiny.model), "--host", "0.0.0.0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--token" in r.stderr
