"""``/healthz`` (the process is alive) and ``/readyz`` (configured, started, and its store reachable).

Kubernetes restarts a pod whose liveness fails and stops routing to one whose readiness fails; readiness
therefore reflects only what this replica can fix by waiting (start-up, store connectivity, shutdown), never
the backend or the IdP, whose outages every replica shares and which are answered per request (502/503).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

Check = Callable[[], Awaitable[str | None]]  # returns a problem description, or None when fine


class Health:
    def __init__(self) -> None:
        self.ready = False
        self.checks: dict[str, Check] = {}

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(self, _: web.Request) -> web.Response:
        problems: dict[str, str] = {}
        if not self.ready:
            problems["sidecar"] = "starting or shutting down"
        for name, check in self.checks.items():
            problem = await check()
            if problem:
                problems[name] = problem
        status = 503 if problems else 200
        body = {"status": "unready" if problems else "ready", "problems": problems}
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
