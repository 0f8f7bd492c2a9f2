"""The FastAPI application of `exiflang serve`: /v1 endpoints over the Python API, errors, the page.

Endpoints (JSON unless asked otherwise; every error is ``{"error": "one readable line"}``):

- ``POST /v1/detect``: splice detection of one uploaded photo: the API's ``Detection.to_json()``
  (score, verdict, percentile among authentic references) and, by default, its maps as 8-bit
  grey PNGs in data URLs (``meanshift``, ``ncuts``, ``mask``: 0..255 = 0..1 on the map's grid);
  ``?preview=true`` adds the photo as decoded (EXIF orientation applied) at the maps' size;
  ``?format=npz`` answers the ``.npz`` file, ``?format=png`` the heatmap overlaid on the photo.
- ``POST /v1/lookup``: likely camera metadata (``Lookup.to_json()``: neighbours, per-tag votes,
  ``known`` = False for "unknown camera"); needs ``--index``.  Each neighbour's ``thumbnail`` is
  the path of its picture (``/v1/thumbnail/ROW``), or null when the index holds none for it.
- ``GET /v1/thumbnail/{row}``: the JPEG thumbnail of an index row (``Index.thumbnail``, <= 128 px,
  a few kB), cacheable (``ETag``, ``Cache-Control: private``); 404 with the reason when there is
  none.  Read from the index folder, not a model call: it does not wait in the gate's queue.
- ``POST /v1/check-exif``: do the pixels agree with the claimed EXIF (the photo's own, or a JSON
  object in the form field ``exif``)?  ``ExifCheck.to_json()``.
- ``GET /v1/health``: liveness and the gate's load; ``GET /v1/model``: ``Model.info()`` (with the
  model card) and the service's limits.  ``GET /openapi.json``: the schema; ``GET /``: the page.

Every model call goes through one :class:`~exiflang.serve.gate.Gate` (bounded workers and queue,
per-request deadline).  Nothing is written to disk: uploads, maps and files live in memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from exiflang.serve.gate import Busy, DeadlineExceeded, Gate
from exiflang.serve.uploads import Upload, UploadError, parse, read_body

STATIC = Path(__file__).resolve().parent / "static"
# The page loads only its own files; data: and blob: carry the maps, the preview and downloads.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
NO_INDEX = "this service has no reference index: start it with --index INDEX_DIR"
# A thumbnail changes only with its index (the ETag says which build): a browser may keep it a day.
THUMB_CACHE = "private, max-age=86400"
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "the photo (JPEG, PNG, TIFF, ...)",
                        },
                        "exif": {
                            "type": "string",
                            "description": "check-exif only: the claimed EXIF as a JSON object "
                            "(default: the photo's own)",
                        },
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass
class Settings:
    """What the service was started with (see ``exiflang serve --help``)."""

    max_upload_mb: float = 25.0
    workers: int = 1
    queue: int = 4
    deadline: float = 120.0
    token: str | None = None
    reference: Any = None  # check-exif's reference (None: the model's default)
    check_exif_unavailable: str | None = None  # why check-exif cannot answer, when it cannot

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class ServiceError(Exception):
    """An answer other than 200 that the endpoint decides itself (no index, bad ``exif`` field)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def grey_png(values: np.ndarray) -> bytes:
    """``float [h,w]`` in 0..1 (or bool) -> an 8-bit grey PNG (0..255; NaN as 0)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def preview_jpeg(rgb: np.ndarray, size: tuple[int, int]) -> bytes:
    """``uint8 [H,W,3]`` -> a JPEG of it resized to ``size`` = (h, w) (what the page draws maps on)."""
    img = Image.fromarray(rgb)
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _claimed_exif(upload: Upload) -> dict[str, Any] | None:
    """The ``exif`` form field as a dict of tag -> value, or None (read the photo's own)."""
    text = upload.fields.get("exif", "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(400, f"the 'exif' field is not JSON: {exc}") from None
    if not isinstance(value, dict) or not value:
        raise ServiceError(400, "the 'exif' field must be a non-empty JSON object of tag -> value")
    return {str(k): str(v) for k, v in value.items()}


def build_app(model: Any, index: Any, settings: Settings) -> FastAPI:
    """The service over a loaded ``exiflang.api.Model`` (and ``Index`` or None)."""
    from exiflang import api

    gate = Gate(settings.workers, settings.queue, settings.deadline)
    app = FastAPI(
        title="exiflang",
        version="1",
        summary="EXIF as Language: splice detection, camera lookup and EXIF consistency of one photo",
        docs_url=None,
        redoc_url=None,
    )
    app.state.gate, app.state.model, app.state.index, app.state.settings = gate, model, index, settings
    started = time.time()

    def authorize(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), settings.token.encode()):
            raise ServiceError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'")

    async def upload_of(request: Request) -> Upload:
        body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_upload_bytes)
        upload = parse(body, request.headers.get("content-type", ""))
        request.state.filename = upload.filename
        return upload

    async def call(fn: Callable[[], Any]) -> Any:
        return await gate.run(fn)

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, str(exc), {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(api.ImageInputError)
    async def _image_error(request: Request, exc: Exception) -> JSONResponse:
        # The API names bytes "<bytes>": the client knows its file by the name it uploaded.
        name = getattr(request.state, "filename", "") or "the upload"
        return _error(422, f"the photo cannot be used: {str(exc).replace('<bytes>', name)}")

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(_: Request, exc: DeadlineExceeded) -> JSONResponse:
        return _error(504, f"{exc} (--deadline); try a smaller max_side")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'query')}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/v1/health", summary="liveness and load (no token needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - started, 1), **gate.state(), "index": index is not None}

    @app.get(
        "/v1/model",
        summary="the model card, the model's settings and the service's limits",
        dependencies=[Depends(authorize)],
    )
    async def model_info() -> dict[str, Any]:
        return {
            "model": model.info(),
            "index": None if index is None else _index_info(index),
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "workers": settings.workers,
                "queue": settings.queue,
                "deadline_s": settings.deadline,
                "token_required": settings.token is not None,
            },
            "check_exif": settings.check_exif_unavailable or "available",
        }

    @app.post(
        "/v1/detect",
        summary="splice detection: score, verdict, percentile and heatmaps",
        dependencies=[Depends(authorize)],
        openapi_extra=UPLOAD_BODY,
        responses={200: {"content": {"application/json": {}, "application/octet-stream": {}, "image/png": {}}}},
    )
    async def detect(
        request: Request,
        max_side: int = Query(
            1600,
            ge=64,
            le=8192,
            description="longest side of the returned maps and PNGs (px); the analysis is always at full resolution",
        ),
        ncuts: bool = Query(True, description="also the normalized-cuts map"),
        maps: bool = Query(True, description="include the maps as grey PNG data URLs"),
        preview: bool = Query(False, description="include the decoded photo at the maps' size"),
        answer: Literal["json", "npz", "png"] = Query(
            "json", alias="format", description="json, or the npz file, or the overlay PNG"
        ),
    ) -> Response:
        upload = await upload_of(request)

        def work() -> Response:
            rgb = api.read_image(upload.data)
            det = model.detect(rgb, max_side=max_side, ncuts=ncuts)
            if answer == "npz":
                buf = io.BytesIO()
                det.save_npz(buf)
                return Response(
                    buf.getvalue(),
                    media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="detection.npz"'},
                )
            if answer == "png":
                return Response(det.heatmap_png(overlay_on=rgb), media_type="image/png")
            return JSONResponse(_detection_json(det, rgb, maps, preview))

        return await call(work)

    @app.post(
        "/v1/lookup",
        summary="likely camera metadata: nearest reference photos and per-tag votes",
        dependencies=[Depends(authorize)],
        openapi_extra=UPLOAD_BODY,
    )
    async def lookup(request: Request, k: int = Query(10, ge=1, le=100, description="neighbours")) -> dict[str, Any]:
        if index is None:
            raise ServiceError(409, NO_INDEX)
        upload = await upload_of(request)
        return _with_thumbnails(await call(lambda: model.lookup(upload.data, index, k=k).to_json()), index)

    thumbs_etag = _thumbnails_etag(index)

    @app.get(
        "/v1/thumbnail/{row}",
        summary="the JPEG thumbnail of a reference photo (a lookup neighbour's 'row')",
        dependencies=[Depends(authorize)],
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "JPEG, longer side <= 128 px"},
            304: {"description": "unchanged (If-None-Match)"},
            404: {"description": "no such row, or no thumbnail for it"},
        },
    )
    async def thumbnail(
        request: Request, row: int = PathParam(..., ge=0, description="index row (a neighbour's 'row')")
    ) -> Response:
        if index is None:
            raise ServiceError(409, NO_INDEX)
        if row >= index.size:
            raise ServiceError(404, f"row {row}: the reference index has {index.size} rows (0..{index.size - 1})")
        etag = f'"{thumbs_etag}-{row}"'
        headers = {"ETag": etag, "Cache-Control": THUMB_CACHE}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        data = await run_in_threadpool(index.thumbnail, row)  # a file read: off the event loop
        if data is None:
            raise ServiceError(404, _no_thumbnail(index, row))
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.post(
        "/v1/check-exif",
        summary="do the pixels agree with the claimed EXIF (own or given)?",
        dependencies=[Depends(authorize)],
        openapi_extra=UPLOAD_BODY,
    )
    async def check_exif(request: Request) -> dict[str, Any]:
        if settings.check_exif_unavailable:
            raise ServiceError(409, settings.check_exif_unavailable)
        upload = await upload_of(request)
        claimed = _claimed_exif(upload)
        return await call(lambda: model.check_exif(upload.data, exif=claimed, reference=settings.reference).to_json())

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.router.on_shutdown.append(gate.close)
    return app


def _with_thumbnails(lookup: dict[str, Any], index: Any) -> dict[str, Any]:
    """``lookup`` with each neighbour's ``thumbnail``: its ``/v1/thumbnail/ROW`` path, or None."""
    thumbs = index.thumbnails
    for n in lookup.get("neighbours", []):
        row = int(n.get("row", -1))
        n["thumbnail"] = f"/v1/thumbnail/{row}" if thumbs is not None and thumbs.has(row) else None
    return lookup


def _thumbnails_etag(index: Any) -> str:
    """An ETag stem that changes whenever the index or its thumbnails are rebuilt."""
    if index is None:
        return ""
    thumbs = index.thumbnails
    ident = json.dumps([index.info.get("created"), None if thumbs is None else thumbs.summary], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _no_thumbnail(index: Any, row: int) -> str:
    if index.thumbnails is None:
        return (
            f"no thumbnail for row {row}: this reference index holds no thumbnails (built with "
            "--no-thumbnails, before thumbnails existed, or without its photos at hand)"
        )
    return f"no thumbnail for row {row}: its photo could not be read when the index was built"


def _index_info(index: Any) -> dict[str, Any]:
    """What the page shows of the index: ``Index.to_json()`` without the server's folder path."""
    return {k: v for k, v in index.to_json().items() if k != "dir"}


def _detection_json(det: Any, rgb: np.ndarray, maps: bool, preview: bool) -> dict[str, Any]:
    """``Detection.to_json()`` plus the maps (grey PNG data URLs) and the preview when asked."""
    out: dict[str, Any] = {"detection": det.to_json()}
    heat = np.asarray(det.heatmap)
    if maps:
        out["maps"] = {"meanshift": data_url(grey_png(heat), "image/png")}
        if det.ncuts_heatmap is not None:
            out["maps"]["ncuts"] = data_url(grey_png(det.ncuts_heatmap), "image/png")
        if det.mask is not None:
            out["maps"]["mask"] = data_url(grey_png(det.mask), "image/png")
        out["maps"]["size"] = list(heat.shape)
    if preview:
        out["preview"] = data_url(preview_jpeg(rgb, heat.shape), "image/jpeg")
    return out
