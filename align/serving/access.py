"""Who may call the API: API keys (align.serving.keys) when they are on, and a per-caller rate limit."""

from __future__ import annotations

import math
import threading
import time

from align.serving.protocol import ApiError


class RateLimiter:
    """At most `per_minute` requests per caller in any minute (a token bucket refilled continuously); 0: no limit."""

    def __init__(self, per_minute: float = 0.0):
        self.per_minute = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(caller, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - at) * self.per_minute / 60.0)
            if tokens < 1.0:
                wait = math.ceil((1.0 - tokens) * 60.0 / self.per_minute)
                self._buckets[caller] = (tokens, now)
                raise ApiError(429, f"rate limit of {self.per_minute:g} requests per minute reached for {caller}; "
                                    f"retry in {wait} s", type="requests", code="rate_limit_exceeded",
                               headers={"Retry-After": str(wait)})
            self._buckets[caller] = (tokens - 1.0, now)


def bearer(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Access:
    """Checks a request's key (when `keys` is given) and its caller's rate; returns the caller's name."""

    def __init__(self, keys=None, limiter: RateLimiter | None = None):
        self.keys, self.limiter = keys, limiter or RateLimiter()

    def caller(self, authorization: str | None, client_host: str) -> tuple[str, bool]:
        """(the caller's name, whether a key named it); ApiError 401/429 otherwise."""
        if self.keys is None:
            name, keyed = f"api@{client_host}", False
        else:
            key = bearer(authorization)
            if key is None:
                raise ApiError(401, "this server needs an API key: send it as 'Authorization: Bearer <key>' (keys "
                                    "are made with `python -m align.run serve --add-key NAME`)",
                               code="missing_api_key")
            name = self.keys.check(key)
            if name is None:
                raise ApiError(401, "incorrect or revoked API key", code="invalid_api_key")
            keyed = True
        self.limiter.take(name)
        return name, keyed
