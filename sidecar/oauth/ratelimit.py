"""Per-address rate limits on every OAuth endpoint (register, authorize, consent, callback, token, revoke), 429.

RFC 6585 §4: "The 429 status code indicates that the user has sent too many requests in a given amount of
time"; the answer carries ``Retry-After``. RFC 7591 §5 and RFC 6749 §10.10 motivate the limits: open
registration invites spam, and the token endpoint is where guessing would happen.

A token bucket per (endpoint, client address; IPv6 by /64, see ``sidecar.oauth.common.rate_key``):
capacity ``rate_limit_per_minute``, refilled continuously at that rate per minute, so a client may burst a
full minute's allowance and then proceeds at the steady rate. ``0`` disables the limit. State is in process
(each replica counts for itself: with N replicas the effective limit is up to N times the setting, which is
acceptable for abuse control); the table is bounded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Distinct addresses remembered per endpoint; the least recently seen is forgotten first. An attacker with
# more addresses than this gets a fresh bucket for some of them, which is no worse than no limit.
MAX_TRACKED_ADDRESSES: Final = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``check(key)`` returns ``0`` when the request may proceed, else the seconds to wait."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def check(self, key: str) -> int:
        if not self.enabled:
            return 0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._capacity, now)
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_TRACKED_ADDRESSES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))
