"""Fetch one photo's bytes over HTTP(S), politely and within bounds; never raises.

One :class:`Downloader` per worker process is shared by all of its fetch threads: one
``requests.Session`` (a pool of keep-alive connections per host, shared by the threads) and one
:class:`~pipeline.host_limits.HostLimiter` (per-host concurrency and request rate).

Per-host limits are per *process*.  A job with many worker processes must divide its global
budget among them; the driver does that (``per_host_concurrency // workers`` and
``per_host_rate / workers``), so the remote host sees at most the job's total.

Time bounds, all wall clock:

* ``timeout``: the connect, and each socket read (a server that goes silent);
* ``deadline``: one attempt as a whole (DNS, connect, TLS, status line, headers and body,
  redirect hops included), enforced at every socket operation by :mod:`pipeline.deadline`, so
  a server trickling its headers or body one byte at a time is cut within one read of it;
* ``row_deadline``: one row as a whole (all attempts, backoff sleeps and fallback URLs): no
  retry or fallback starts once it is spent, and each attempt's deadline is cut to what is left.

Time spent queued for a host slot (politeness, :mod:`pipeline.host_limits`) is not charged to
either deadline: the row has not reached the network yet, and every slot holder is itself
bounded.  So a fetch holds its thread for at most ``row_deadline`` plus that queueing.
Redirects are followed by hand so that every hop goes through the host limiter of the host it
lands on.
"""
from __future__ import annotations

import email.utils
import http.cookiejar
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Optional, Sequence
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions as u3

from pipeline import records as st
from pipeline.deadline import BoundedAdapter, Deadline, applied
from pipeline.host_limits import HostLimiter

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 18           # upper bound of one socket read
_DRAIN_MAX = 1 << 16       # error and redirect bodies up to this are read to keep the connection


@dataclass
class DownloadConfig:
    """Bounds, retry policy and politeness of one worker process's downloads."""

    timeout: float = 20.0            # seconds (> 0), connect and each socket read
    deadline: float = 60.0           # seconds (> 0) for one attempt: DNS, connect, headers, body
    row_deadline: float = 180.0      # seconds (> 0) for one row: all attempts, backoff, fallbacks
    max_bytes: int = 64 * 2**20      # larger bodies abort with download_failed "too large"
    max_redirects: int = 5
    retries: int = 3                 # extra attempts on timeouts, connection errors, 429 and 5xx
    backoff_base: float = 0.5        # base * 2**attempt with jitter, capped by backoff_max
    backoff_max: float = 30.0
    per_host_concurrency: int = 8    # simultaneous requests to one host from this process (<=0: none)
    per_host_rate: float = 0.0       # max requests/s to one host from this process (0 = unlimited)
    user_agent: str = "exiflang/0.1 (+https://github.com/exiflang/exiflang; dataset builder)"

    def __post_init__(self) -> None:
        for name in ("timeout", "deadline", "row_deadline"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):  # NaN fails too
                raise ValueError(f"download {name} must be a positive number of seconds, not {value!r}")


@dataclass
class FetchResult:
    """What became of one row's URL (and its fallbacks): bytes, or a status and a one-line error."""

    url: str                  # the URL asked for (the primary one, even when a fallback served)
    final_url: Optional[str]  # where the bytes came from, after redirects and fallbacks
    status: str               # pipeline.records: SUCCESS, HTTP_ERROR, TIMEOUT, DOWNLOAD_FAILED
    http_status: Optional[int]
    data: Optional[bytes]
    error: Optional[str]      # one line; None on success
    attempts: int             # requests started, over all URLs (redirect hops not counted)
    seconds: float            # wall time, backoff included


@dataclass
class _Outcome:
    """The result of one attempt at one URL, before retry and fallback bookkeeping."""

    status: str
    error: Optional[str] = None
    http_status: Optional[int] = None
    final_url: Optional[str] = None
    data: Optional[bytes] = None
    retryable: bool = False
    retry_after: Optional[float] = None


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Photos need no cookies, and a jar shared by all threads would leak state between rows."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


def url_error(url: str) -> Optional[str]:
    """Why ``url`` cannot be fetched at all (bad scheme, no host), or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return _one_line(f"invalid URL {url!r}: {exc}")
    if not parts.scheme:
        return f"invalid URL {url[:80]!r}: no scheme"
    if parts.scheme.lower() not in ("http", "https"):
        return f"unsupported scheme {parts.scheme!r}"
    return None if host else f"invalid URL {url[:80]!r}: no host"


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):  # delay-seconds (fractions tolerated)
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _content_length(resp: requests.Response) -> Optional[int]:
    try:
        n = int(resp.headers.get("Content-Length", ""))
        return n if n >= 0 else None
    except ValueError:
        return None


def _http_error(code: int, reason: Optional[str]) -> str:
    phrase = reason or next((c.phrase for c in HTTPStatus if c.value == code), "")
    return f"HTTP {code} {phrase}".rstrip()


def _exception_reason(exc: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 exception, on one line."""
    inner: BaseException = exc
    while True:
        nxt = getattr(inner, "reason", None)
        if not isinstance(nxt, BaseException) and inner.args and isinstance(inner.args[0], BaseException):
            nxt = inner.args[0]
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    return _one_line(f"{type(inner).__name__}: {inner}")


class _BodyError(Exception):
    """A body that cannot be used; carries the attempt's outcome."""

    def __init__(self, status: str, error: str, retryable: bool = False) -> None:
        super().__init__(error)
        self.outcome = _Outcome(status, error, retryable=retryable)


class Downloader:
    """Thread-safe fetcher: call :meth:`fetch` from any number of threads, then :meth:`close`."""

    def __init__(self, config: Optional[DownloadConfig] = None) -> None:
        self.config = cfg = config or DownloadConfig()
        self.limiter = HostLimiter(cfg.per_host_concurrency, cfg.per_host_rate)
        self._closed = threading.Event()
        self._session = requests.Session()
        # Enough pooled connections per host for every slot the limiter hands out, so
        # connections are reused instead of discarded; retries are ours, not urllib3's.
        per_host = cfg.per_host_concurrency if cfg.per_host_concurrency > 0 else 64
        # BoundedAdapter: its connections obey the attempt's deadline (pipeline.deadline).
        adapter = BoundedAdapter(pool_connections=64, pool_maxsize=max(per_host, 1), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # identity: the original bytes, never a re-encoded or compressed variant.
        self._session.headers.update({"User-Agent": cfg.user_agent, "Accept-Encoding": "identity",
                                      "Accept": "image/*,*/*;q=0.8"})
        self._session.cookies.set_policy(_NoCookies())

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop pending backoff sleeps and close pooled connections."""
        self._closed.set()
        self._session.close()

    def fetch(self, url: str, fallback_urls: Sequence[str] = ()) -> FetchResult:
        """Fetch ``url``; if it fails, each of ``fallback_urls`` in order.  Never raises.

        Takes at most ``row_deadline`` seconds plus time queued for host slots.  On failure of
        all, the result describes the primary URL, with the fallbacks' errors appended to
        ``error``.  Empty and repeated fallbacks are skipped, and so are those left no time.
        """
        t0 = time.perf_counter()
        row = Deadline(self.config.row_deadline, "row deadline")
        candidates = list(dict.fromkeys([url, *(u for u in fallback_urls if u)]))
        attempts, failures = 0, []
        first: Optional[FetchResult] = None
        for n, candidate in enumerate(candidates):
            if first is not None and row.expired():
                failures.append(f"{len(candidates) - n} not tried: {row.describe()} spent")
                break
            try:
                res = self._fetch_one(candidate, row)
            except Exception as exc:  # a bug here must cost one row, not the shard
                res = FetchResult(candidate, None, st.DOWNLOAD_FAILED, None, None,
                                  _one_line(f"internal error: {type(exc).__name__}: {exc}"), 0, 0.0)
            attempts += res.attempts
            if res.status == st.SUCCESS:
                return FetchResult(url, res.final_url, res.status, res.http_status, res.data, None,
                                   attempts, time.perf_counter() - t0)
            first = first or res
            failures.append(res.error or res.status)
        assert first is not None
        error = failures[0] + ("; fallbacks: " + "; ".join(failures[1:]) if failures[1:] else "")
        return FetchResult(url, first.final_url, first.status, first.http_status, None,
                           _one_line(error, 600), attempts, time.perf_counter() - t0)

    def _fetch_one(self, url: str, row: Deadline) -> FetchResult:
        """One URL with retries and backoff, within what is left of the row's deadline."""
        t0 = time.perf_counter()
        bad = url_error(url)
        if bad:
            return FetchResult(url, None, st.DOWNLOAD_FAILED, None, None, bad, 0, 0.0)
        cfg, attempt, out = self.config, 0, _Outcome(st.DOWNLOAD_FAILED, "downloader closed")
        spent = False
        while not self._closed.is_set():
            attempt += 1
            out = self._attempt(url, row)
            if out.status == st.SUCCESS or not out.retryable or attempt > cfg.retries:
                break
            wait = self._backoff(attempt - 1, out.retry_after)
            if wait >= row.left():
                spent = True  # no time left for another attempt
                break
            # Event.wait, not sleep: close() cuts backoff short.
            if self._closed.wait(wait):
                break
        error = out.error
        tries = f"{attempt} attempt{'s' * (attempt != 1)}"
        if spent and row.label not in (error or ""):
            tries += f", {row.describe()} spent"
        if out.status == st.TIMEOUT:
            error = f"timed out after {tries}: {out.error}"
        elif out.status != st.SUCCESS and (attempt > 1 or spent):
            error = f"{out.error} (after {tries})"
        return FetchResult(url, out.final_url, out.status, out.http_status, out.data, error,
                           attempt, time.perf_counter() - t0)

    def _backoff(self, retry: int, retry_after: Optional[float]) -> float:
        """Seconds before retry number ``retry`` (0-based): the server's word, else exponential."""
        cfg = self.config
        if retry_after is not None:
            # A little jitter on top so that threads told the same thing do not return in step.
            return min(cfg.backoff_max, retry_after * random.uniform(1.0, 1.1))
        delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** retry)
        return random.uniform(delay / 2, delay)

    def _attempt(self, url: str, row: Deadline) -> _Outcome:
        """One attempt: the request and its redirect hops, each hop inside its host's slot."""
        cfg = self.config
        deadline = Deadline(cfg.deadline).within(row)
        seen, current = {url}, url
        for _ in range(cfg.max_redirects + 1):
            host = (urlsplit(current).hostname or "").lower()
            with self.limiter.slot(host) as waited:
                # Queueing for politeness is not the server's time: credit it back.
                deadline.extend(waited)
                row.extend(waited)
                out, location = self._request(current, deadline)
            if location is None:
                return out
            nxt = urljoin(current, location)
            bad = url_error(nxt)
            if bad:
                return _Outcome(st.DOWNLOAD_FAILED, f"redirect to {bad}", out.http_status, nxt)
            if nxt in seen:
                return _Outcome(st.DOWNLOAD_FAILED, f"redirect loop: {nxt[:200]} visited twice",
                                out.http_status, nxt)
            seen.add(nxt)
            current = nxt
        return _Outcome(st.DOWNLOAD_FAILED, f"too many redirects (> {cfg.max_redirects})",
                        out.http_status, current)

    def _request(self, url: str, deadline: Deadline) -> tuple[_Outcome, Optional[str]]:
        """One HTTP exchange under ``deadline``; the outcome and, for a redirect, its Location."""
        if deadline.expired():  # spent on earlier redirect hops
            return _Outcome(st.TIMEOUT, f"{deadline.describe()} exceeded (redirects)",
                            final_url=url, retryable=True), None
        t = self.config.timeout
        with applied(deadline):
            try:
                resp = self._session.get(url, stream=True, timeout=(t, t), allow_redirects=False)
            except requests.Timeout as exc:
                return _Outcome(st.TIMEOUT, _timeout_reason(exc, deadline, t), final_url=url,
                                retryable=True), None
            except requests.exceptions.SSLError as exc:  # a bad certificate does not heal on retry
                return _Outcome(st.DOWNLOAD_FAILED, f"TLS error: {_exception_reason(exc)}",
                                final_url=url), None
            except requests.ConnectionError as exc:
                return _Outcome(st.DOWNLOAD_FAILED, f"connection failed: {_exception_reason(exc)}",
                                final_url=url, retryable=True), None
            except Exception as exc:  # invalid URL, header, ...: deterministic, so no retry
                return _Outcome(st.DOWNLOAD_FAILED, _exception_reason(exc), final_url=url), None
            try:
                return self._response(resp, url, deadline)
            finally:
                resp.close()

    def _response(self, resp: requests.Response, url: str,
                  deadline: Deadline) -> tuple[_Outcome, Optional[str]]:
        code = resp.status_code
        location = resp.headers.get("Location")
        if code in _REDIRECTS and location:
            self._discard(resp, deadline)
            return _Outcome(st.DOWNLOAD_FAILED, http_status=code, final_url=url), location
        if not 200 <= code < 300:
            retryable = code == 429 or code >= 500
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if retryable else None
            self._discard(resp, deadline)
            return _Outcome(st.HTTP_ERROR, _http_error(code, resp.reason), code, url,
                            retryable=retryable, retry_after=retry_after), None
        try:
            data = self._read_body(resp, deadline)
        except _BodyError as exc:
            exc.outcome.http_status, exc.outcome.final_url = code, url
            return exc.outcome, None
        return _Outcome(st.SUCCESS, None, code, url, data), None

    def _read_body(self, resp: requests.Response, deadline: Deadline) -> bytes:
        """The whole body, within ``max_bytes`` and ``deadline``; checks Content-Length."""
        cfg, raw, failed = self.config, resp.raw, st.DOWNLOAD_FAILED
        expected = _content_length(resp)
        if expected is not None and expected > cfg.max_bytes:
            raise _BodyError(failed, f"too large: Content-Length {expected} > max_bytes {cfg.max_bytes}")
        buf, broken = bytearray(), None
        try:
            # read1: one socket read at a time, each bounded by pipeline.deadline, so memory
            # is checked as the bytes come (read(n) would wait for all n).
            while chunk := raw.read1(_CHUNK, decode_content=True):
                buf += chunk
                if len(buf) > cfg.max_bytes:
                    raise _BodyError(failed, f"too large: more than max_bytes {cfg.max_bytes}")
        except (u3.ReadTimeoutError, TimeoutError):
            why = (f"{deadline.describe()} exceeded during the body" if deadline.expired()
                   else f"body stalled for {cfg.timeout:g} s")
            raise _BodyError(st.TIMEOUT, f"{why} ({len(buf)} bytes)", retryable=True) from None
        except u3.DecodeError as exc:
            raise _BodyError(failed, _one_line(f"undecodable body: {exc}")) from None
        except (u3.ProtocolError, OSError) as exc:
            broken = exc  # urllib3 reports a short body this way; say it in bytes below
        got = raw.tell()  # bytes on the wire, comparable with Content-Length
        if expected is not None and got < expected:
            raise _BodyError(failed, f"body truncated: got {got} of {expected} bytes", retryable=True)
        if broken is not None:
            raise _BodyError(failed, f"connection broken: {_exception_reason(broken)}", retryable=True)
        return bytes(buf)

    def _discard(self, resp: requests.Response, deadline: Deadline) -> None:
        """Read a small error/redirect body so its connection can be reused; drop big ones."""
        n = _content_length(resp)
        if n is None or n > _DRAIN_MAX:
            return  # resp.close() will close the connection rather than read an unknown amount
        try:
            while n > 0 and not deadline.expired():
                chunk = resp.raw.read1(n)
                if not chunk:
                    break
                n -= len(chunk)
        except Exception:  # the outcome is already decided; the connection is simply dropped
            pass


def _timeout_reason(exc: requests.Timeout, deadline: Deadline, timeout: float) -> str:
    """One line for a timeout before the body: the attempt's deadline, or the per-read timeout."""
    connecting = isinstance(exc, requests.ConnectTimeout)
    if deadline.expired():
        stage = "while connecting" if connecting else "before the response headers"
        return f"{deadline.describe()} exceeded {stage}"
    return f"{'connect' if connecting else 'no response'} within {timeout:g} s"
