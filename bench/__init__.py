"""Benchmark: the sidecar side by side with nginx, a bare aiohttp proxy and direct access (`python -m bench`)."""
