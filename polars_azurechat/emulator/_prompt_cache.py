"""Prompt caching, emulated: the cached prefix of a prompt a deployment saw recently.

Azure caches a prompt of at least 1,024 tokens: a later request whose first 1,024
tokens are identical gets them from the cache, and then every further 128 identical
tokens (``usage.prompt_tokens_details.cached_tokens`` is 0, 1,024, 1,152, ...). A cache
is cleared after minutes of inactivity; the ``user`` (or ``prompt_cache_key``) is
combined with the prefix's hash.

The emulator does it deterministically, per deployment: a prompt is laid out as one
text (the structured output's schema first, as Azure prefixes it to the system
message, then each message with its role), a token being 4 characters of it. At each
boundary (1,024 tokens, then every 128, up to the prompt's tokens) the hash of the text
so far is a prefix; a request's cached tokens are the longest of its prefixes seen
within ``ttl_s`` on the clock, and every prefix it has is remembered (refreshed) as it
is answered. A prompt under 1,024 tokens costs nothing: it is neither hashed nor kept.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable, Sequence

__all__ = ["CHARS_PER_TOKEN", "MIN_TOKENS", "STEP_TOKENS", "PromptCache"]

#: The shortest prompt (tokens) that is cached.
MIN_TOKENS = 1024
#: Cached tokens grow by this many beyond :data:`MIN_TOKENS`.
STEP_TOKENS = 128
#: Characters of the laid-out prompt per token, for the boundaries.
CHARS_PER_TOKEN = 4
#: Prefixes kept per deployment at most (the oldest used are forgotten first).
MAX_PREFIXES = 65_536


class PromptCache:
    """The prompt prefixes one deployment answered recently.

    Parameters
    ----------
    ttl_s
        How long an unused prefix stays cached, in seconds on ``clock`` (0: nothing
        is ever cached).
    clock
        Monotonic seconds.

    Examples
    --------
    >>> cache = PromptCache(300.0, lambda: 0.0)
    >>> long = ["x" * 4 * 1200]
    >>> cache.cached(long, 1200, ""), cache.cached(long, 1200, "")
    (0, 1152)
    >>> cache.cached(long, 1200, "another user")
    0
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def reset(self) -> None:
        """Forget every prefix."""
        with self._lock:
            self._seen.clear()

    def cached(self, pieces: Sequence[str], prompt_tokens: int, key: str) -> int:
        """The cached tokens of a prompt, which is then remembered.

        Parameters
        ----------
        pieces
            The prompt laid out as text, in order (concatenated).
        prompt_tokens
            The prompt's tokens (the emulator's estimate): no boundary past them.
        key
            What the prefix hash is combined with (``user``, ``prompt_cache_key``).

        Returns
        -------
        int
            0, or :data:`MIN_TOKENS` plus a multiple of :data:`STEP_TOKENS`.
        """
        if prompt_tokens < MIN_TOKENS or self.ttl_s <= 0:
            return 0
        text = "".join(pieces)
        top = min(prompt_tokens, len(text) // CHARS_PER_TOKEN)
        if top < MIN_TOKENS:
            return 0
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass") + b"\0")
        prefixes: list[tuple[int, bytes]] = []
        done = 0
        for tokens in range(MIN_TOKENS, top + 1, STEP_TOKENS):
            end = tokens * CHARS_PER_TOKEN
            digest.update(text[done:end].encode("utf-8", "surrogatepass"))
            done = end
            prefixes.append((tokens, digest.copy().digest()[:16]))
        now = self.clock()
        best = 0
        with self._lock:
            seen = self._seen
            for tokens, prefix in prefixes:
                last = seen.get(prefix)
                if last is not None and now - last < self.ttl_s:
                    best = tokens
                seen[prefix] = now
                seen.move_to_end(prefix)
            while len(seen) > MAX_PREFIXES:
                seen.popitem(last=False)
        return best
