"""Unit tests of the store: the contract suite on the memory store and on fakeredis, plus crypto and codecs.

No server is needed here; tests/integration/store runs the same suite against real Redis.
"""
