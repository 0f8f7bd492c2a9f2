"""A real S3-compatible server on loopback (moto's standalone server) for object-storage tests.

Tests that read or write ``s3://`` paths start one with :func:`s3_server`; it binds
127.0.0.1 on a free port, so nothing leaves the machine.  fsspec/s3fs reach it through
:func:`storage_options` (endpoint + dummy credentials), or through the environment that
:func:`s3_env` returns for subprocesses (``AWS_ENDPOINT_URL`` is honoured by botocore >= 1.31).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_server(buckets: tuple[str, ...] = ("exiflang",)) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1; yields its endpoint URL with ``buckets`` created."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def storage_options(endpoint: str) -> dict:
    """fsspec ``storage_options`` for s3fs against ``endpoint``."""
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment a subprocess needs to reach ``endpoint`` as its S3 (credentials + URL)."""
    env = dict(os.environ)
    env.update(CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = endpoint
    env["AWS_ENDPOINT_URL_S3"] = endpoint
    return env
