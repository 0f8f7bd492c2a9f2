"""`exiflang serve`: HTTP service and analyst's page (splice detection, camera lookup, EXIF consistency).

Options, the loopback-or-token rule, loading the model once, running uvicorn.

The model (and index) are loaded once, before the port opens; torch's CPU threads are set by
``--threads``.  The service binds 127.0.0.1 by default; any other address needs ``--token``
(or ``EXIFLANG_SERVE_TOKEN``), which every /v1 request but /v1/health must then send as
``Authorization: Bearer TOKEN``.  Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys

from exiflang.command import Command
from exiflang.errors import CommandError

TOKEN_ENV = "EXIFLANG_SERVE_TOKEN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare serve's arguments."""
    p.add_argument("--model", required=True, help="a model folder (a training run's model/ or a converted checkpoint)")
    p.add_argument("--index", help="an `exiflang index` folder: enables /v1/lookup (likely camera metadata)")
    p.add_argument(
        "--reference",
        help="check-exif's reference EXIF set (an index, embeddings or shards folder; "
        "default: the model's training shards when found, else --index)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token required on /v1 requests (default ${TOKEN_ENV})",
    )
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload in MB (default 25)")
    p.add_argument(
        "--workers", "--concurrency", dest="workers", type=int, default=1, help="model calls run at once (default 1)"
    )
    p.add_argument("--queue", type=int, default=4, help="requests waiting beyond those; more get 503 (default 4)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per request before a 504 (default 120)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_args(args: argparse.Namespace) -> None:
    """Refuse options that cannot work (one line, exit 2) before anything is loaded."""
    if not is_loopback(args.host) and not args.token:
        raise CommandError(
            None,
            f"--host {args.host} is not a loopback address: set --token (or "
            f"${TOKEN_ENV}) so that only holders of the token can use the service",
        )
    if args.token is not None and len(args.token) < 8:
        raise CommandError(None, "--token must be at least 8 characters")
    if not 0 <= args.port <= 65535:
        raise CommandError(None, f"--port {args.port} is not a port number")
    for name, value, low in (
        ("--workers", args.workers, 1),
        ("--queue", args.queue, 0),
        ("--threads", args.threads or 1, 1),
    ):
        if value < low:
            raise CommandError(None, f"{name} must be at least {low} (got {value})")
    if args.max_upload_mb <= 0 or args.deadline <= 0:
        raise CommandError(None, "--max-upload-mb and --deadline must be positive")


def run(args: argparse.Namespace) -> int:
    """Load the model (and index) once, bind, serve until Ctrl-C."""
    check_args(args)
    import uvicorn

    from exiflang import api
    from exiflang.serve.app import Settings, build_app

    model = api.load(args.model, device=args.device, threads=args.threads)
    index = api.load_index(args.index) if args.index else None
    print(
        "exiflang serve: preparing check-exif's reference EXIF set (once; embedding training shards "
        "can take minutes: --reference INDEX is quicker)",
        file=sys.stderr,
        flush=True,
    )
    reference, why_not = check_reference(model, args.reference, index)
    settings = Settings(
        max_upload_mb=args.max_upload_mb,
        workers=args.workers,
        queue=args.queue,
        deadline=args.deadline,
        token=args.token,
        reference=reference,
        check_exif_unavailable=why_not,
    )
    app = build_app(model, index, settings)
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"exiflang serve: http://{host}:{port}/  (model {args.model}"
        f"{', index ' + args.index if args.index else ''}; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, timeout_graceful_shutdown=5
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def check_reference(model, reference: str | None, index) -> tuple[object, str | None]:
    """(reference for check-exif, None) with its checker built now, at start (it embeds the
    reference set once; not on a client's clock); or (None, why check-exif is unavailable).

    An explicit ``--reference`` that fails is an error of the command; the default (the training
    shards) falling through to ``--index``, or to no check-exif at all, is not.
    """
    if reference is not None:
        model.checker(reference)
        return reference, None
    try:
        model.checker(None)
        return None, None
    except ValueError as exc:
        if index is None:
            return None, f"check-exif is unavailable: {exc}; start the service with --reference or --index"
    model.checker(index)
    return index, None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 = any free port): a taken port is one line, exit 2."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CommandError(None, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


COMMAND = Command(prog="exiflang serve", doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main
