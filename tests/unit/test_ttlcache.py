from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.ttlcache import BoundedCache


def test_deadline_and_bound() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1, until=10)
    assert cache.get("a", now=9.99) == 1
    assert cache.get("a", now=10) is None and "a" not in cache
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)  # full: the oldest ("a") goes
    assert cache.get("a") is None and cache.get("b") == 2 and cache.get("c") == 3
    cache.put("b", 20)  # an update never evicts
    assert len(cache) == 2 and cache.get("c") == 3


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 100)), max_size=200), st.integers(1, 10))
def test_never_more_than_the_bound(ops: list[tuple[int, float]], bound: int) -> None:
    cache: BoundedCache[int, float] = BoundedCache(bound)
    for key, until in ops:
        cache.put(key, until, until=until)
        assert len(cache) <= bound
        assert cache.get(key, now=until - 1) == until
