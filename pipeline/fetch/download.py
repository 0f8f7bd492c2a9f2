"""Fetch one photo's bytes over HTTP(S), politely and within bounds; never raises.

One :class:`Downloader` per worker process (per shard) is shared by all of its fetch threads:
one urllib3 ``PoolManager`` (keep-alive connections per host, shared by the threads; no
cookies; proxies read from the environment once, not per request) and one
:class:`~exiflang.pipeline.fetch.host_limits.HostLimiter`, whose slots come from the job's host governor
(:mod:`exiflang.pipeline.fetch.politeness`): per-host concurrency and request rate for the *whole job*, and a
429/503 pauses the host for every worker, honouring ``Retry-After`` up to
``retry_after_max``.  urllib3 directly rather than ``requests``: requests re-reads the proxy
environment and merges settings on every request and copies the body; on loopback this cut
the CPU of a ~100 KB fetch from ~0.8 to ~0.5 ms (``benchmarks/fetch_cost.py``).

Time bounds, all wall clock:

* ``timeout``: the connect, and each socket read (a server that goes silent);
* ``deadline``: one attempt as a whole (DNS, connect, TLS, status line, headers and body,
  redirect hops included), enforced at every socket operation by :mod:`exiflang.pipeline.fetch.deadline`, so
  a server trickling its headers or body one byte at a time is cut within one read of it;
* ``row_deadline``: one row as a whole (all attempts, backoff sleeps and fallback URLs): no
  retry or fallback starts once it is spent, and each attempt's deadline is cut to what is left.

Time spent queued for a host slot (politeness, host pauses included) is not charged to either
deadline: the row has not reached the network yet, and every slot holder is itself bounded.
So a fetch holds its thread for at most ``row_deadline`` plus that queueing.  Redirects are
followed by hand so that every hop goes through the limiter of the host it lands on.

A row need not wait out a paused host in its thread: :meth:`Downloader.proceed` with ``park``
hands back its :class:`RowFetch` (where it stands, no bytes) instead, and is called again once
the pause is over (:mod:`exiflang.pipeline.shards.window` parks such rows so the shard goes on).

A 2xx answer whose ``X-Robots-Tag`` opts the photo out (:mod:`exiflang.pipeline.fetch.opt_out`) ends as
``opted_out`` without reading the body, and no fallback URL of the row is tried (the same
photo); ``respect_opt_out=False`` turns that off.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
import urllib3.exceptions as u3

from exiflang.pipeline import records as st
from exiflang.pipeline.fetch.deadline import Deadline, applied, bounded_pool_manager, bounded_proxy_manager
from exiflang.pipeline.fetch.host_limits import Governor, HostLimiter, HostPaused, LimiterClosed
from exiflang.pipeline.fetch.opt_out import DEFAULT_DIRECTIVES, agent_token, opt_out
from exiflang.pipeline.fetch.politeness import THROTTLE_CODES, GovernorLimits, HostGovernor

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 18  # upper bound of one socket read
_DRAIN_MAX = 1 << 16  # error and redirect bodies up to this are read to keep the connection
_HOLD_SLACK = 30.0  # a slot lapses this long after its attempt's bounds (a lost release)


@dataclass
class DownloadConfig:
    """Bounds, retry policy and politeness of one job's downloads."""

    timeout: float = 20.0  # seconds (> 0), connect and each socket read
    deadline: float = 60.0  # seconds (> 0) for one attempt: DNS, connect, headers, body
    row_deadline: float = 180.0  # seconds (> 0) for one row: all attempts, backoff, fallbacks
    max_bytes: int = 64 * 2**20  # larger bodies abort with download_failed "too large"
    max_redirects: int = 5
    retries: int = 3  # extra attempts on timeouts, connection errors, 429 and 5xx
    backoff_base: float = 0.5  # base * 2**attempt with jitter, capped by backoff_max; also
    backoff_max: float = 30.0  # the first host pause after a 429/503 without Retry-After
    # Politeness, for the whole job (exiflang.pipeline.fetch.politeness): requests in flight to one host
    # (<= 0: no cap), request starts per second to one host (0: no cap), and the longest
    # pause a host's Retry-After (or repeated 429/503s) can impose, in seconds.
    per_host_concurrency: int = 32
    per_host_rate: float = 0.0
    retry_after_max: float = 600.0
    respect_opt_out: bool = True  # X-Robots-Tag opt-outs -> opted_out (exiflang.pipeline.fetch.opt_out)
    opt_out_directives: tuple[str, ...] = DEFAULT_DIRECTIVES
    user_agent: str = "exiflang/0.1 (+https://github.com/exiflang/exiflang; dataset builder)"
    # Set by the driver when several processes share the job: where its host governor
    # listens (exiflang.pipeline.fetch.governor_service), the key to it, and how many workers share it.
    governor_address: str | None = None
    governor_key: str | None = None
    governor_share: int = 1
    governor_board: str | None = None  # its pause board, for workers on its machine (governor_service)

    def __post_init__(self) -> None:
        for name in ("timeout", "deadline", "row_deadline"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):  # NaN fails too
                raise ValueError(f"download {name} must be a positive number of seconds, not {value!r}")
        if not (isinstance(self.retry_after_max, (int, float)) and 0 <= self.retry_after_max < math.inf):
            raise ValueError(f"retry_after_max must be a number of seconds >= 0, not {self.retry_after_max!r}")
        if not (self.per_host_rate >= 0 and math.isfinite(self.per_host_rate)):
            raise ValueError(f"per_host_rate must be >= 0 requests/s, not {self.per_host_rate!r}")
        self.opt_out_directives = tuple(self.opt_out_directives)  # a JSON round trip makes a list

    def limits(self) -> GovernorLimits:
        """The job-wide politeness settings, as the host governor takes them."""
        return GovernorLimits(self.per_host_concurrency, self.per_host_rate, self.retry_after_max, self.backoff_base)


@dataclass
class FetchResult:
    """What became of one row's URL (and its fallbacks): bytes, or a status and a one-line error."""

    url: str  # the URL asked for (the primary one, even when a fallback served)
    final_url: str | None  # where the bytes came from, after redirects and fallbacks
    status: str  # exiflang.pipeline.records: SUCCESS, HTTP_ERROR, TIMEOUT, DOWNLOAD_FAILED
    http_status: int | None
    data: bytes | None
    error: str | None  # one line; None on success
    attempts: int  # requests started, over all URLs (redirect hops not counted)
    seconds: float  # wall time, backoff included


@dataclass
class RowFetch:
    """One row's fetch between two steps (:meth:`Downloader.proceed`): where it stands, no bytes.

    Small (the URLs, a few counters, one-line errors), so a row waiting for a paused host can
    leave its thread and its shard's window and be taken up again later.
    """

    url: str  # the primary URL (the result describes it)
    candidates: list[str]  # the primary, then the fallbacks, deduplicated
    row: Deadline  # the row's deadline, extended by the time queued or parked
    t0: float  # perf_counter at the start: the result's seconds are wall time from here
    index: int = 0  # the candidate being tried
    tries: int = 0  # attempts made at that candidate
    url_t0: float = 0.0  # perf_counter when that candidate's first attempt began
    last: _Outcome | None = None  # that candidate's last answer (a failure: no bytes)
    attempts: int = 0  # requests started at the candidates before it
    failures: list[str] = field(default_factory=list)  # one line per candidate that failed
    first: FetchResult | None = None  # the first candidate's failure (no bytes)
    host: str = ""  # while parked: the paused host
    pause: float = 0.0  # while parked: seconds its pause still ran when the row parked
    parked_at: float = 0.0  # while parked: monotonic time it parked (0: not parked)


@dataclass
class _Outcome:
    """The result of one attempt at one URL, before retry and fallback bookkeeping."""

    status: str
    error: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    data: bytes | None = None
    retryable: bool = False
    retry_after: float | None = None


def url_error(url: str) -> str | None:
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


def parse_retry_after(value: str | None) -> float | None:
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


def _content_length(resp: urllib3.BaseHTTPResponse) -> int | None:
    try:
        n = int(resp.headers.get("Content-Length", ""))
        return n if n >= 0 else None
    except ValueError:
        return None


def _http_error(code: int, reason: str | None) -> str:
    phrase = reason or next((c.phrase for c in HTTPStatus if c.value == code), "")
    return f"HTTP {code} {phrase}".rstrip()


def _exception_reason(exc: BaseException) -> str:
    """The innermost useful message of a urllib3 exception, on one line."""
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
    """Thread-safe fetcher: call :meth:`fetch` from any number of threads, then :meth:`close`.

    ``governor`` (tests, or several downloaders sharing limits) overrides the one the config
    names: the job's remote governor (``governor_address``), else one of this downloader's own.
    """

    def __init__(self, config: DownloadConfig | None = None, governor: Governor | None = None) -> None:
        self.config = cfg = config or DownloadConfig()
        self._governor = governor if governor is not None else _governor_for(cfg)
        self.limiter = HostLimiter(self._governor, hold=cfg.deadline + cfg.timeout + _HOLD_SLACK)
        self._closed = threading.Event()
        self._timeout = urllib3.Timeout(connect=cfg.timeout, read=cfg.timeout)
        self._agent = agent_token(cfg.user_agent)
        # Enough pooled connections per host for the slots a host can have, so connections
        # are reused instead of discarded; retries and redirects are ours, not urllib3's.
        per_host = cfg.per_host_concurrency if 0 < cfg.per_host_concurrency <= 64 else 64
        # identity: the original bytes, never a re-encoded or compressed variant.
        self._pool_args: dict[str, Any] = dict(
            num_pools=64,
            maxsize=per_host,
            retries=False,
            headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"},
        )
        self._direct = bounded_pool_manager(**self._pool_args)
        self._proxies = urllib.request.getproxies()  # once, not per request
        self._via: dict[str, Any] = {}  # proxy URL -> its manager
        self._lock = threading.Lock()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop pending backoff sleeps and slot waits, and close pooled connections."""
        self._closed.set()
        self.limiter.close()
        self._direct.clear()
        with self._lock:
            for manager in self._via.values():
                manager.clear()
        close = getattr(self._governor, "close", None)
        if close is not None:
            close()

    def fetch(self, url: str, fallback_urls: Sequence[str] = ()) -> FetchResult:
        """Fetch ``url``; if it fails, each of ``fallback_urls`` in order.  Never raises.

        Takes at most ``row_deadline`` seconds plus time queued for host slots.  On failure of
        all, the result describes the primary URL, with the fallbacks' errors appended to
        ``error``.  Empty and repeated fallbacks are skipped, and so are those left no time;
        an opted-out URL ends the row (its fallbacks are the same photo).
        """
        done = self.proceed(self.begin(url, fallback_urls))
        assert isinstance(done, FetchResult)  # without ``park`` a fetch never parks
        return done

    def begin(self, url: str, fallback_urls: Sequence[str] = ()) -> RowFetch:
        """A row's fetch, not started: hand it to :meth:`proceed`."""
        candidates = list(dict.fromkeys([url, *(u for u in fallback_urls if u)]))
        return RowFetch(url, candidates, Deadline(self.config.row_deadline, "row deadline"), time.perf_counter())

    def proceed(self, job: RowFetch, park: Callable[[], bool] | None = None) -> FetchResult | RowFetch:
        """Go on with ``job`` as :meth:`fetch` does, to its :class:`FetchResult`; never raises.

        ``park`` (see :meth:`HostLimiter.slot`): when the next attempt would wait for a paused
        host and ``park()`` grants a space, ``job`` comes back unfinished, its ``pause`` set; the
        caller calls this again once the pause is over.  Time parked is queueing: not charged to
        the row's deadline (it is in the result's wall-clock ``seconds``).
        """
        if job.parked_at:
            job.row.extend(time.monotonic() - job.parked_at)
            job.parked_at, job.pause = 0.0, 0.0
        n = len(job.candidates)
        while job.index < n:
            candidate = job.candidates[job.index]
            if job.first is not None and job.tries == 0 and job.row.expired():
                job.failures.append(f"{n - job.index} not tried: {job.row.describe()} spent")
                break
            try:
                res = self._fetch_one(job, candidate, park)
            except HostPaused as paused:
                job.row.extend(paused.waited)  # queued for a slot before the pause: not the row's time
                job.host, job.pause, job.parked_at = paused.host, paused.seconds, time.monotonic()
                return job
            except Exception as exc:  # noqa: BLE001 - a bug here must cost one row, not the shard
                msg = _one_line(f"internal error: {type(exc).__name__}: {exc}")
                res = FetchResult(candidate, None, st.DOWNLOAD_FAILED, None, None, msg, 0, 0.0)
            job.attempts += res.attempts
            job.index, job.tries, job.last = job.index + 1, 0, None
            if res.status in (st.SUCCESS, st.OPTED_OUT):
                seconds = time.perf_counter() - job.t0
                return FetchResult(
                    job.url, res.final_url, res.status, res.http_status, res.data, res.error, job.attempts, seconds
                )
            job.first = job.first or res
            job.failures.append(res.error or res.status)
        first = job.first
        assert first is not None
        error = job.failures[0] + ("; fallbacks: " + "; ".join(job.failures[1:]) if job.failures[1:] else "")
        return FetchResult(
            job.url,
            first.final_url,
            first.status,
            first.http_status,
            None,
            _one_line(error, 600),
            job.attempts,
            time.perf_counter() - job.t0,
        )

    def _fetch_one(self, job: RowFetch, url: str, park: Callable[[], bool] | None) -> FetchResult:
        """One URL with retries and backoff, within what is left of the row's deadline.

        Its progress (attempts made, the last answer) lives in ``job``, so a :class:`HostPaused`
        raised before an attempt loses nothing: the next call goes on from there.
        """
        bad = url_error(url)
        if bad:
            return FetchResult(url, None, st.DOWNLOAD_FAILED, None, None, bad, 0, 0.0)
        if job.tries == 0:
            job.url_t0, job.last = time.perf_counter(), _Outcome(st.DOWNLOAD_FAILED, "downloader closed")
        cfg, spent = self.config, False
        out = job.last
        assert out is not None
        while not self._closed.is_set():
            cut = self._attempt(url, job.row, park)
            if cut is None:  # closed while waiting for a slot: the last answer stands
                break
            job.tries, job.last = job.tries + 1, cut
            out = cut
            if out.status == st.SUCCESS or not out.retryable or job.tries > cfg.retries:
                break
            # A 429/503 paused the host for the whole job: the next slot waits for that
            # (uncharged, like all queueing; or the row parks); anything else backs off this row alone.
            wait = 0.0 if out.http_status in THROTTLE_CODES else self._backoff(job.tries - 1)
            if wait >= job.row.left():
                spent = True  # no time left for another attempt
                break
            # Event.wait, not sleep: close() cuts backoff short.
            if wait > 0 and self._closed.wait(wait):
                break
        return _finish(url, out, job.tries, spent, job.row, time.perf_counter() - job.url_t0)

    def _backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (0-based): exponential with jitter, capped."""
        delay = min(self.config.backoff_max, self.config.backoff_base * 2**retry)
        return random.uniform(delay / 2, delay)

    def _attempt(self, url: str, row: Deadline, park: Callable[[], bool] | None = None) -> _Outcome | None:
        """One attempt: the request and its redirect hops, each hop inside its host's slot.

        None when the downloader was closed while the attempt waited for a slot.  Raises
        :class:`HostPaused` when ``park`` took a space for a paused host before a hop; the
        attempt does not count, and is made again from ``url`` later (a redirect followed to a
        paused host costs the redirecting host one more request, not a blocked thread).
        """
        cfg = self.config
        deadline = Deadline(cfg.deadline).within(row)
        seen, current = {url}, url
        for _ in range(cfg.max_redirects + 1):
            host = (urlsplit(current).hostname or "").lower()
            try:
                with self.limiter.slot(host, park) as slot:
                    # Queueing for politeness is not the server's time: credit it back.
                    deadline.extend(slot.waited)
                    row.extend(slot.waited)
                    out, location = self._request(current, deadline)
                    slot.answered(out.http_status, out.retry_after)
            except LimiterClosed:
                return None
            if location is None:
                return out
            nxt = urljoin(current, location)
            bad = url_error(nxt)
            if bad:
                return _Outcome(st.DOWNLOAD_FAILED, f"redirect to {bad}", out.http_status, nxt)
            if nxt in seen:
                return _Outcome(st.DOWNLOAD_FAILED, f"redirect loop: {nxt[:200]} visited twice", out.http_status, nxt)
            seen.add(nxt)
            current = nxt
        return _Outcome(st.DOWNLOAD_FAILED, f"too many redirects (> {cfg.max_redirects})", out.http_status, current)

    def _manager(self, url: str) -> Any:
        """The pool manager for ``url``: direct, or through the environment's proxy for it."""
        if not self._proxies:
            return self._direct
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme.lower())
        # proxy_bypass_environment: urllib's own no_proxy matcher, public but missing from typeshed.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if not proxy or bypass(parts.hostname or "", self._proxies):
            return self._direct
        with self._lock:
            manager = self._via.get(proxy)
            if manager is None:
                manager = self._via[proxy] = bounded_proxy_manager(proxy, **self._pool_args)
        return manager

    def _request(self, url: str, deadline: Deadline) -> tuple[_Outcome, str | None]:
        """One HTTP exchange under ``deadline``; the outcome and, for a redirect, its Location."""
        if deadline.expired():  # spent on earlier redirect hops
            return _Outcome(
                st.TIMEOUT, f"{deadline.describe()} exceeded (redirects)", final_url=url, retryable=True
            ), None
        with applied(deadline):
            try:
                resp = self._manager(url).urlopen(
                    "GET", url, redirect=False, preload_content=False, timeout=self._timeout
                )
            except Exception as exc:  # noqa: BLE001 - every failure becomes this attempt's outcome
                return _failure(exc, url, deadline, self.config.timeout), None
            try:
                return self._response(resp, url, deadline)
            finally:
                if not resp.closed:  # unread bytes would poison a pooled connection: drop it
                    resp.close()
                resp.release_conn()

    def _response(self, resp: urllib3.BaseHTTPResponse, url: str, deadline: Deadline) -> tuple[_Outcome, str | None]:
        code = resp.status
        location = resp.headers.get("Location")
        if code in _REDIRECTS and location:
            self._discard(resp, deadline)
            return _Outcome(st.DOWNLOAD_FAILED, http_status=code, final_url=url), location
        if not 200 <= code < 300:
            retryable = code == 429 or code >= 500
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if retryable else None
            self._discard(resp, deadline)
            return _Outcome(
                st.HTTP_ERROR, _http_error(code, resp.reason), code, url, retryable=retryable, retry_after=retry_after
            ), None
        cfg = self.config
        if cfg.respect_opt_out:
            why = opt_out(resp.headers.getlist("X-Robots-Tag"), cfg.opt_out_directives, self._agent)
            if why:  # the body is not even read
                return _Outcome(st.OPTED_OUT, f"opted out by {why}", code, url), None
        try:
            data = self._read_body(resp, deadline)
        except _BodyError as exc:
            exc.outcome.http_status, exc.outcome.final_url = code, url
            return exc.outcome, None
        return _Outcome(st.SUCCESS, None, code, url, data), None

    def _read_body(self, resp: urllib3.BaseHTTPResponse, deadline: Deadline) -> bytes:
        """The whole body, within ``max_bytes`` and ``deadline``; checks Content-Length."""
        cfg, failed = self.config, st.DOWNLOAD_FAILED
        expected = _content_length(resp)
        if expected is not None and expected > cfg.max_bytes:
            raise _BodyError(failed, f"too large: Content-Length {expected} > max_bytes {cfg.max_bytes}")
        parts, size, broken = [], 0, None
        try:
            # read1: one socket read at a time, each bounded by exiflang.pipeline.fetch.deadline, so memory
            # is checked as the bytes come (read(n) would wait for all n).
            while chunk := resp.read1(_CHUNK, decode_content=True):
                parts.append(chunk)
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise _BodyError(failed, f"too large: more than max_bytes {cfg.max_bytes}")
        except (u3.ReadTimeoutError, TimeoutError):
            why = (
                f"{deadline.describe()} exceeded during the body"
                if deadline.expired()
                else f"body stalled for {cfg.timeout:g} s"
            )
            raise _BodyError(st.TIMEOUT, f"{why} ({size} bytes)", retryable=True) from None
        except u3.DecodeError as exc:
            raise _BodyError(failed, _one_line(f"undecodable body: {exc}")) from None
        except (u3.ProtocolError, OSError) as exc:
            broken = exc  # urllib3 reports a short body this way; say it in bytes below
        got = resp.tell()  # bytes on the wire, comparable with Content-Length
        if expected is not None and got < expected:
            raise _BodyError(failed, f"body truncated: got {got} of {expected} bytes", retryable=True)
        if broken is not None:
            raise _BodyError(failed, f"connection broken: {_exception_reason(broken)}", retryable=True)
        # One copy, at the end (a bytearray grown chunk by chunk and then copied costs two).
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _discard(self, resp: urllib3.BaseHTTPResponse, deadline: Deadline) -> None:
        """Read a small error/redirect body so its connection can be reused; drop big ones."""
        n = _content_length(resp)
        if n is None or n > _DRAIN_MAX:
            return  # closing the response drops the connection rather than read an unknown amount
        try:
            while n > 0 and not deadline.expired():
                chunk = resp.read1(n)
                if not chunk:
                    break
                n -= len(chunk)
        except Exception:  # noqa: BLE001 - the outcome is already decided; the connection is simply dropped
            pass


def _governor_for(cfg: DownloadConfig) -> Governor:
    """The job's remote governor if the driver named one, else one for this downloader alone."""
    if cfg.governor_address and cfg.governor_key:
        from exiflang.pipeline.fetch.governor_service import RemoteGovernor

        return RemoteGovernor(
            cfg.governor_address, cfg.governor_key, cfg.limits(), cfg.governor_share, cfg.governor_board
        )
    return HostGovernor(cfg.limits())


def _finish(url: str, out: _Outcome, attempt: int, spent: bool, row: Deadline, seconds: float) -> FetchResult:
    """The result of one URL's attempts, its error saying how many there were."""
    error = out.error
    tries = f"{attempt} attempt{'s' * (attempt != 1)}"
    if spent and row.label not in (error or ""):
        tries += f", {row.describe()} spent"
    if out.status == st.TIMEOUT:
        error = f"timed out after {tries}: {out.error}"
    elif out.status not in (st.SUCCESS, st.OPTED_OUT) and (attempt > 1 or spent):
        error = f"{out.error} (after {tries})"
    return FetchResult(url, out.final_url, out.status, out.http_status, out.data, error, attempt, seconds)


def _failure(exc: BaseException, url: str, deadline: Deadline, timeout: float) -> _Outcome:
    """The outcome of an exchange that raised before a response (urllib3's exception kinds)."""
    if isinstance(exc, (u3.NewConnectionError, u3.ProtocolError, u3.ProxyError)):
        # NewConnectionError is a ConnectTimeoutError subclass: refused, unreachable, no DNS.
        return _Outcome(
            st.DOWNLOAD_FAILED, f"connection failed: {_exception_reason(exc)}", final_url=url, retryable=True
        )
    if isinstance(exc, (u3.TimeoutError, TimeoutError)):
        return _Outcome(st.TIMEOUT, _timeout_reason(exc, deadline, timeout), final_url=url, retryable=True)
    if isinstance(exc, u3.SSLError):  # a bad certificate does not heal on retry
        return _Outcome(st.DOWNLOAD_FAILED, f"TLS error: {_exception_reason(exc)}", final_url=url)
    if isinstance(exc, OSError):
        return _Outcome(
            st.DOWNLOAD_FAILED, f"connection failed: {_exception_reason(exc)}", final_url=url, retryable=True
        )
    # An invalid URL or header, ...: deterministic, so no retry.
    return _Outcome(st.DOWNLOAD_FAILED, _exception_reason(exc), final_url=url)


def _timeout_reason(exc: BaseException, deadline: Deadline, timeout: float) -> str:
    """One line for a timeout before the body: the attempt's deadline, or the per-read timeout."""
    connecting = isinstance(exc, u3.ConnectTimeoutError)
    if deadline.expired():
        stage = "while connecting" if connecting else "before the response headers"
        return f"{deadline.describe()} exceeded {stage}"
    return f"{'connect' if connecting else 'no response'} within {timeout:g} s"
