"""A loopback HTTP/1.1 server with well-behaved and misbehaving routes, for tests and benchmarks.

    with LoopbackServer(photos_dir) as srv:
        srv.url("/files/a.jpg")                      # the file, Content-Length, keep-alive
        srv.url("/files/a.jpg?i=7")                  # same bytes under a distinct URL (cached)
        srv.hits["/flaky500"]                        # requests seen per path

Routes (query parameters in brackets, defaults after '='):
  /files/<name>                   a file under ``root_dir`` (read once, then served from memory)
  /status/<code>                  that status with a small text body
  /429[retry_after=1, retry_date=, times=1, file=, key=]
                                  429 with ``Retry-After: retry_after`` (or an HTTP-date
                                  ``retry_date`` seconds ahead) for the first ``times`` requests
                                  of a client key, then the file (or a small body)
  /flaky500[times=1, file=, key=] 500 ``times`` times per client key, then the file
  /slow[delay=5, file=]           waits ``delay`` s before the status line
  /trickle[size=1000, chunk=1, interval=0.05, file=]
                                  full headers, then ``chunk`` bytes every ``interval`` s
  /trickle-headers[interval=0.5, pad=200, file=]
                                  the status line and headers (an ``X-Pad`` of ``pad`` bytes
                                  among them) one byte every ``interval`` s, then the body
  /truncated[file=, size=1000]    Content-Length of the whole body, half of it sent, then close
  /redirect-loop                  302 to /redirect-loop?b=1, which 302s back
  /redirect[to=, n=1]             ``n`` hops of 302, then to ``to`` (a path or a URL)
  /notimage                       200 with an HTML page
  /headers                        the request's headers as text, one "Name: value" per line
  /robots[tag=noai, tag2=, file=] 200 with ``X-Robots-Tag: tag`` (and a second such header
                                  ``tag2`` if given), then the file (or a small body)
  /held[delay=0.05, file=]        counted as *held* from arrival until ``delay`` s later, just
                                  before the response goes out (``held_max``: the peak): a
                                  client cannot have seen the response, so it cannot have sent
                                  its next request yet, and the count never over-states the
                                  concurrency (``max_in_flight`` can, by a scheduling lag)
  /storm[at=1, retry_after=1, file=]
                                  a host-wide count of /storm requests: the ``at``-th one
                                  gets 429 with ``Retry-After: retry_after`` (``none``: no
                                  header), every other one the file (or a small body)
  /big[size=1048576, nolength=0]  ``size`` bytes of junk (``nolength=1``: no Content-Length,
                                  body delimited by closing the connection)

The client key of the counted routes is ``key`` if given, else the whole request target, so
each distinct URL has its own count.  Statistics (``hits``, ``max_in_flight``, ``connections``,
``log``) are for assertions; :meth:`reset_stats` clears them between tests.
"""

from __future__ import annotations

import email.utils
import mimetypes
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

_JUNK = bytes(range(256)) * 256  # 64 KiB block repeated for /big


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: connections are reused between requests
    server: _Server
    timeout = 60  # idle keep-alive connections do not pin a thread forever

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without NODELAY, Nagle plus delayed
        # ACKs would add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._connection_closed(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet tests
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        owner._enter(parts.path, self.path)
        try:
            route = owner._route(parts.path)
            if route is None:
                self.send_body(404, b"no such route\n")
            else:
                route(self, parts.path, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeouts): expected in tests
        except ValueError as exc:  # a malformed query (size=abc): the test's fault, say so
            self.send_body(400, f"bad request: {exc}\n".encode())
        finally:
            owner._leave()

    def send_body(
        self, code: int, body: bytes, ctype: str = "text/plain", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_redirect(self, location: str, code: int = 302) -> None:
        self.send_body(code, b"redirect\n", headers={"Location": location})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the benchmark opens many connections at once
    owner: LoopbackServer


class LoopbackServer:
    """The server on 127.0.0.1 (a free port) in a daemon thread; a context manager."""

    def __init__(self, root_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        self.root_dir = Path(root_dir).resolve() if root_dir is not None else None
        self.host = host
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cache: dict[str, bytes] = {}
        self._keys: Counter[str] = Counter()
        self._open: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset_stats()

    # lifecycle -----------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled routes and cut open keep-alive connections."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (which may carry a query string)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # statistics ----------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Clear request counts, the in-flight peak, the connection count and the log."""
        with self._lock:
            self.hits: Counter[str] = Counter()  # per path, query excluded
            self.target_hits: Counter[str] = Counter()  # per path + query
            # A live gauge, not a statistic: requests of an earlier test (a /slow stall the
            # client gave up on) are still running and will leave during the next test.
            self.in_flight = getattr(self, "in_flight", 0)
            self.max_in_flight = self.in_flight
            self.connections = 0  # TCP connections accepted
            self.held_now = getattr(self, "held_now", 0)  # /held requests inside their delay
            self.held_max = self.held_now
            self.log: deque[tuple[float, str]] = deque(maxlen=100_000)  # (monotonic, target)

    def _enter(self, path: str, target: str) -> None:
        with self._lock:
            self.hits[path] += 1
            self.target_hits[target] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.log.append((time.monotonic(), target))

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)

    def _count(self, route: str, query: dict[str, str], target: str) -> int:
        """How many times this client key has hit ``route`` before, counting this one."""
        key = route + "|" + query.get("key", target)
        with self._lock:
            self._keys[key] += 1
            return self._keys[key]

    # content -------------------------------------------------------------------------
    def file_bytes(self, name: str) -> bytes | None:
        """Bytes of ``root_dir/name`` (cached after the first read), or None."""
        if self.root_dir is None or not name:
            return None
        with self._lock:
            data = self._cache.get(name)
        if data is not None:
            return data
        path = (self.root_dir / name).resolve()
        if self.root_dir not in path.parents or not path.is_file():
            return None  # no escaping the root with '..'
        data = path.read_bytes()
        with self._lock:
            self._cache[name] = data
        return data

    def _send_file(self, h: _Handler, name: str) -> None:
        data = self.file_bytes(name)
        if data is None:
            h.send_body(404, f"no file {name!r}\n".encode())
            return
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        h.send_body(200, data, ctype)

    def _send_file_or_ok(self, h: _Handler, query: dict[str, str]) -> None:
        if "file" in query:
            self._send_file(h, query["file"])
        else:
            h.send_body(200, b"ok\n")

    def _route(self, path: str) -> Callable[[_Handler, str, dict[str, str]], None] | None:
        if path.startswith("/files/"):
            return lambda h, p, q: self._send_file(h, unquote(p[len("/files/") :]))
        if path.startswith("/status/"):
            return self._r_status
        return {
            "/429": self._r_429,
            "/flaky500": self._r_flaky500,
            "/slow": self._r_slow,
            "/trickle": self._r_trickle,
            "/trickle-headers": self._r_trickle_headers,
            "/truncated": self._r_truncated,
            "/redirect-loop": self._r_redirect_loop,
            "/redirect": self._r_redirect,
            "/notimage": self._r_notimage,
            "/big": self._r_big,
            "/headers": self._r_headers,
            "/robots": self._r_robots,
            "/held": self._r_held,
            "/storm": self._r_storm,
        }.get(path)

    # misbehaving routes ----------------------------------------------------------------
    def _r_status(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        code = int(path.rsplit("/", 1)[1])
        h.send_body(code, f"status {code}\n".encode())

    def _r_429(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        if self._count(path, q, h.path) <= int(q.get("times", "1")):
            if "retry_date" in q:
                after = email.utils.formatdate(time.time() + float(q["retry_date"]), usegmt=True)
            else:
                after = q.get("retry_after", "1")
            h.send_body(429, b"slow down\n", headers={"Retry-After": after})
        else:
            self._send_file_or_ok(h, q)

    def _r_flaky500(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        if self._count(path, q, h.path) <= int(q.get("times", "1")):
            h.send_body(500, b"flaky\n")
        else:
            self._send_file_or_ok(h, q)

    def _r_slow(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        if self._stop.wait(float(q.get("delay", "5"))):
            h.close_connection = True
            return
        self._send_file_or_ok(h, q)

    def _r_trickle(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        data = self.file_bytes(q["file"]) if "file" in q else b"x" * int(q.get("size", "1000"))
        chunk, interval = int(q.get("chunk", "1")), float(q.get("interval", "0.05"))
        h.send_response(200)
        h.send_header("Content-Length", str(len(data or b"")))
        h.end_headers()
        for i in range(0, len(data or b""), chunk):
            if self._stop.wait(interval):
                break
            h.wfile.write((data or b"")[i : i + chunk])
        h.close_connection = True

    def _r_trickle_headers(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        # Each byte comes well within any per-read timeout; only a total deadline ends this.
        data = (self.file_bytes(q["file"]) if "file" in q else b"ok\n") or b""
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n"
            f"X-Pad: {'p' * int(q.get('pad', '200'))}\r\nConnection: close\r\n\r\n"
        ).encode()
        h.close_connection = True
        interval = float(q.get("interval", "0.5"))
        for i in range(len(head)):
            if self._stop.wait(interval):
                return
            h.wfile.write(head[i : i + 1])
        h.wfile.write(data)

    def _r_truncated(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        data = self.file_bytes(q["file"]) if "file" in q else b"t" * int(q.get("size", "1000"))
        data = data or b""
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        h.close_connection = True  # the promised rest never comes

    def _r_redirect_loop(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        # A two-step cycle (A -> B -> A), the common real-world shape.
        h.send_redirect("/redirect-loop" if "b" in q else "/redirect-loop?b=1")

    def _r_redirect(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        n, to = int(q.get("n", "1")), q.get("to", "/notimage")
        if n <= 1:
            h.send_redirect(to)
        else:
            h.send_redirect(f"/redirect?n={n - 1}&to={quote(to, safe='')}")

    def _r_notimage(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        body = b"<!DOCTYPE html><html><head><title>Not here</title></head><body>gone</body></html>\n"
        h.send_body(200, body, "text/html; charset=utf-8")

    def _r_big(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        size, nolength = int(q.get("size", str(2**20))), q.get("nolength", "0") == "1"
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        if nolength:
            h.send_header("Connection", "close")
            h.close_connection = True
        else:
            h.send_header("Content-Length", str(size))
        h.end_headers()
        left = size
        while left > 0 and not self._stop.is_set():
            block = _JUNK[: min(left, len(_JUNK))]
            h.wfile.write(block)
            left -= len(block)

    def _r_headers(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        h.send_body(200, "".join(f"{k}: {v}\n" for k, v in h.headers.items()).encode())

    def _r_robots(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        data = (self.file_bytes(q["file"]) if "file" in q else b"ok\n") or b""
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(data)))
        for key in ("tag", "tag2"):
            if key in q or key == "tag":
                h.send_header("X-Robots-Tag", q.get(key, "noai"))
        h.end_headers()
        h.wfile.write(data)

    def _r_storm(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        # One count for the whole route (key "storm"), whatever the query: a host-wide event.
        if self._count(path, {"key": "storm"}, h.path) == int(q.get("at", "1")):
            after = q.get("retry_after", "1")
            h.send_body(429, b"slow down\n", headers={} if after == "none" else {"Retry-After": after})
        else:
            self._send_file_or_ok(h, q)

    def _r_held(self, h: _Handler, path: str, q: dict[str, str]) -> None:
        with self._lock:
            self.held_now += 1
            self.held_max = max(self.held_max, self.held_now)
        try:
            self._stop.wait(float(q.get("delay", "0.05")))
        finally:
            with self._lock:
                self.held_now -= 1
        self._send_file_or_ok(h, q)
