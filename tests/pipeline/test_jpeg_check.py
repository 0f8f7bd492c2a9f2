"""The JPEG structure check against the real decoder: never stricter, catches truncation."""

import io

import pytest
from PIL import Image

from exiflang.pipeline import records as st
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.shards.jpeg_check import jpeg_problem
from exiflang.pipeline.shards.sample import process_bytes


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - the oracle: any failure of Pillow's full decode means "does not decode"
        return False


def test_camera_photos_pass(photos_dir):
    for p in sorted(photos_dir.glob("*.jpg")):
        assert jpeg_problem(p.read_bytes()) is None, p.name


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
def test_truncation_is_caught(photos_dir, frac):
    for p in sorted(photos_dir.glob("*.jpg"))[:20]:
        data = p.read_bytes()
        # Cut inside the scan itself: some cameras pad or append data after its EOI.
        end = data.find(b"\xff\xd9", data.find(b"\xff\xda"))
        assert jpeg_problem(data[: int(end * frac)]), p.name


def test_never_stricter_than_the_decoder(shared_data):
    caught = 0
    for p in sorted((shared_data / "malformed").glob("*.jpg")):
        data = p.read_bytes()
        if jpeg_problem(data):
            caught += 1
            assert not _decodes(data), f"{p.name}: structure check rejects a decodable file"
    assert caught >= 20


def test_draft_verification_catches_corrupt_scans(shared_data):
    """Files with a whole structure but corrupt entropy-coded data need a decode to find."""
    structure, draft = ShardConfig(min_tags=0), ShardConfig(min_tags=0, verify="draft")
    extra = 0
    for p in sorted((shared_data / "malformed").glob("*.jpg")):
        data = p.read_bytes()
        a, b = process_bytes(data, structure).status, process_bytes(data, draft).status
        if a == st.SUCCESS and b == st.DECODE_FAILED:
            extra += 1
        assert not (a == st.DECODE_FAILED and b == st.SUCCESS)
    assert extra >= 1


def test_not_a_jpeg():
    assert jpeg_problem(b"GIF89a....") == "not a JPEG (no SOI marker)"
    assert jpeg_problem(b"\xff\xd8\xff\xd9").startswith("EOI before")
