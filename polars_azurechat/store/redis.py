"""The Redis answer cache. Not meant for outside use.

``cache="redis://host:6379/0"`` makes every worker (processes, machines, Ray workers)
read and write one set of answers: they deduplicate and resume together. An answer is
one Redis string, ``pac:answer:<cache key>``, holding compact JSON of the fields the
SQLite cache keeps (content, finish reason, token counts, when it was written).

Failing fast: a Redis that cannot be reached when the job is built is a
:class:`~polars_azurechat.errors.CacheError` naming the server (never its password).
A Redis that fails during a run breaks the cache as a failing SQLite file does: one
warning, and the run goes on without it.

The client is redis-py's synchronous one: one ``MGET`` per batch of rows, on the engine's
event loop (a sub-millisecond round trip on a nearby server), and the answers of each
loop turn handed to the cache's writer thread, which writes them in one pipelined round
trip (:mod:`polars_azurechat.store.buffered`). A Redis still loading its data set
(``BusyLoadingError``) is busy, not broken: the writes wait and are tried again. The shared quota (``limiter=``) is
:mod:`polars_azurechat.transport.redis_limiter`, on the same connection helpers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from polars_azurechat._types import ChatResult
from polars_azurechat.config import scrub, shown_url
from polars_azurechat.errors import CacheError
from polars_azurechat.store.buffered import BufferedCache

logger = logging.getLogger(__name__)

__all__ = ["PREFIX", "RedisCache", "connect", "is_redis_url", "scrub", "shown_url"]

#: Prefix of every key this package writes.
PREFIX = "pac:"
#: Keys read per MGET.
CHUNK = 500


def is_redis_url(value: object) -> bool:
    """Whether ``value`` names a Redis server (``redis://`` or ``rediss://``)."""
    return isinstance(value, str) and value.split("://", 1)[0] in ("redis", "rediss")


def connect(url: str, what: str, error: type[Exception] = CacheError) -> Any:
    """A redis-py client for ``url``, checked with a PING; raise naming the server.

    The messages name the server without its password (:func:`shown_url`) and are
    scrubbed of it, as written and percent-decoded (:func:`scrub`); a URL redis-py
    cannot read is refused without redis-py's words (they may quote the password).
    """
    shown = shown_url(url)
    try:
        import redis
    except ImportError:
        msg = f"{what} {shown}: needs redis-py: pip install 'polars-azurechat[redis]'"
        raise error(msg) from None
    client = None
    if _well_formed(url):
        with contextlib.suppress(ValueError):
            client = redis.Redis.from_url(
                url.split("?", 1)[0], socket_connect_timeout=2.0, socket_timeout=5.0
            )
    if client is None:
        msg = (
            f"{what} {shown}: not a Redis URL redis-py can read; write it "
            "redis://[[user]:password@]host[:port][/db], with / ? # @ : % in the "
            "password percent-encoded (%2F %3F %23 %40 %3A %25)"
        )
        raise error(scrub(msg, url))
    try:
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        msg = f"{what} {shown}: cannot reach Redis ({type(exc).__name__}: {exc})"
        raise error(scrub(msg, url)) from None
    return client


def _well_formed(url: str) -> bool:
    """Whether the user part of ``url`` ends where a URL parser ends it.

    A password with an unescaped ``/``, ``?`` or ``#`` ends the host early: the
    parser would take a piece of the password for the host (and look it up).
    """
    rest = url.partition("://")[2]
    if "@" not in rest:
        return True
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    return "@" in netloc and netloc.rpartition("@")[0] == rest.rpartition("@")[0]


class RedisCache(BufferedCache[tuple[str, bytes]]):
    """Answers kept in Redis, shared by every worker pointing at the same server.

    The same interface as :class:`~polars_azurechat.store.sqlite.SqliteCache`.

    Parameters
    ----------
    url
        ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).

    Attributes
    ----------
    path
        The URL without its password.
    broken
        None while the cache works; the reason once Redis failed during a run.
    """

    _log = logger

    def __init__(self, url: str) -> None:
        super().__init__()
        self.path = shown_url(url)
        self._url = url
        self._client = connect(url, "cache")

    def __repr__(self) -> str:
        return f"RedisCache({self.path!r})"

    def _label(self) -> str:
        return f"cache {self.path}"

    def _scrub(self, text: str) -> str:
        return scrub(text, self._url)

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """The hits among ``keys`` (empty once broken or closed; never raises)."""
        import redis

        keys = list(dict.fromkeys(keys))
        with self._lock:
            if not self._usable() or not keys:
                return {}
            out = self._queued_hits(keys)
            if out:
                keys = [k for k in keys if k not in out]
            try:
                for start in range(0, len(keys), CHUNK):
                    chunk = keys[start : start + CHUNK]
                    values = self._client.mget([PREFIX + "answer:" + k for k in chunk])
                    for key, raw in zip(chunk, values, strict=True):
                        if raw is None:
                            continue
                        out[key] = _hit(raw)
            except (redis.RedisError, ValueError, KeyError, TypeError) as exc:
                self._break(f"cannot read answers ({self._problem(exc)})")
                return {}
        return out

    def put(self, key: str, result: ChatResult) -> None:
        """Queue an answer (failures are never cached); :meth:`flush` writes."""
        if result.exception is not None or not self._usable():
            return
        value = json.dumps(
            {
                "c": result.content,
                "f": result.finish_reason,
                "p": result.prompt_tokens,
                "o": result.completion_tokens,
                "t": time.time(),
                **({} if result.logprobs is None else {"l": result.logprobs}),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
        self._add(key, (PREFIX + "answer:" + key, value))

    def _result(self, row: tuple[str, bytes]) -> ChatResult:
        return _hit(row[1])

    def _errors(self, *, writing: bool) -> tuple[type[Exception], ...]:
        import redis

        return (redis.RedisError,)

    def _problem(self, error: Exception) -> str:
        return f"{type(error).__name__}: {error}"

    def _is_busy(self, error: Exception) -> bool:
        import redis

        return isinstance(error, redis.BusyLoadingError)

    def _open_writer(self) -> Any:
        return self._client  # redis-py's client is safe to share between threads

    def _write(self, handle: Any, rows: list[tuple[str, bytes]]) -> None:
        """Write ``rows`` in one pipelined round trip."""
        pipe = handle.pipeline(transaction=False)
        for key, value in rows:
            pipe.set(key, value)
        pipe.execute()

    def _count(self) -> int:
        return sum(1 for _ in self._client.scan_iter(PREFIX + "answer:*", count=1000))

    def _disconnect(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing must not raise
            logger.debug("closing the Redis connection failed", exc_info=True)


def _hit(raw: bytes) -> ChatResult:
    """A stored answer (compact JSON) as a cache hit."""
    d = json.loads(raw)
    return ChatResult(
        content=d["c"],
        finish_reason=d["f"],
        prompt_tokens=d["p"],
        completion_tokens=d["o"],
        attempts=0,
        cached=True,
        logprobs=None if d.get("l") is None else tuple((t, p) for t, p in d["l"]),
    )


# -- the shared limiter ---------------------------------------------------------------

#: Admit one request into the shared ledger, or say how long to wait.
#:
#: KEYS: ledger (zset of admissions "seq:tokens:cumulative tokens", scored by time),
#: rejected (zset "seq:tokens" of admissions a 429 refused, scored by their admission
#: time), cooldown, token counter, learned budgets (hash), base (the cumulative count
#: of the last admission trimmed away). ARGV: tokens, request budget and window, token
#: budget and window (-1: none, use the published ones; -2: none at all, a probe), margin share, margin seconds, candidate windows
#: ("1,10,60"), now. Returns {1, member, then requests and tokens inside each candidate
#: window} or {0, wait seconds as a string}.
#:
#: Every count is O(log n): requests by ZCOUNT, tokens as a difference of cumulative
#: counts (the running total now, less the total just before the window), less the
#: rejected ones inside it (429s are rare). Only a wait on the token budget walks the
#: window's admissions, and the token budget then bounds how many there are.
