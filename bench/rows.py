"""What the benchmark runs: the servers (``SERVICES``) and the configurations measured (``ROWS``).

Adding a configuration is adding entries here, nothing else:

* a **service** is one server the benchmark starts: a ``build`` function turns a ``ServiceContext``
  (its port, a private temp dir, the base URLs of the services it ``needs``) into a ``Launch`` (argv,
  environment, files to write first). ``after_start`` may prepare it once it listens (seed a store, warm
  a grant); ``counters`` reads numbers that the report turns into "per request" (Redis round trips).
  ``role`` says how its CPU is reported: ``backend``, ``proxy`` or ``store``.
* a **row** is one measured configuration: wrk talks to ``target``; ``backend`` names the service that
  answers in the end (ratios compare rows with the same backend: ``direct`` rows and ``bare`` rows are the
  baselines); ``token`` names the bearer the requests carry (``TOKENS``).

Rows still to come (issue 7), and what each needs here:

* gate with JWKS verification: a ``jwks`` service serving a key set, a ``signed`` token signed with it,
  and a sidecar service with ``MCP_SIDECAR_JWKS_URL`` in its env (``sidecar_service(..., env=...)``);
* broker on the memory store and on Redis with a warm grant: a ``redis`` service (role ``store``, with
  ``counters`` reading ``INFO stats`` for round trips per request), a sidecar with ``--mode broker`` and
  an ``after_start`` that performs the grant once;
* broker with 100,000 grants: the same with an ``after_start`` that seeds Redis first;
* FastMCP's proxy with JWT verification: a service running ``fastmcp`` (the ``bench`` extra);
* ``--workers 2``: ``sidecar_service(..., workers=2)``; CPU and RSS are already summed/listed per process
  of the tree.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.workload import unsigned_jwt


@dataclass(frozen=True)
class ServiceContext:
    key: str
    port: int
    workdir: Path
    deps: Mapping[str, str]  # service key -> base URL, for every key in ServiceSpec.needs
    binaries: Mapping[str, str | None]  # "nginx", "wrk" -> path, None when unavailable
    free_port: Callable[[], int]

    @property
    def python(self) -> str:
        return sys.executable

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)  # name -> content, written into workdir first


class Unavailable(RuntimeError):
    """Raised by a ``build`` function when the service cannot run here (a tool is missing)."""


@dataclass(frozen=True)
class ServiceSpec:
    key: str
    label: str
    role: str  # "backend" | "proxy" | "store"
    build: Callable[[ServiceContext], Launch]
    needs: tuple[str, ...] = ()
    ready_timeout: float = 30.0
    after_start: Callable[[ServiceContext], Awaitable[None]] | None = None
    # Counters read before and after every wrk run (e.g. Redis commands processed, the sidecar's cache
    # hits from its metrics); the report gives their increase per request.
    counters: Callable[[ServiceContext], Awaitable[dict[str, float]]] | None = None


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    kind: str  # "direct" and "bare" are the baselines ratios refer to; "nginx", "sidecar", "peer" ...
    backend: str  # key of the backend service
    target: str  # key of the service wrk and the clients talk to (== backend for direct rows)
    token: str = "unsigned"  # key in TOKENS
    sse: bool = False  # also measure the SSE stream through this path (needs the aiohttp backend)

    @property
    def proxied(self) -> bool:
        return self.target != self.backend


PROJECT_ROOT = Path(__file__).resolve().parent.parent

# --- bearers ---------------------------------------------------------------------------------------------

TOKENS: dict[str, Callable[[], str]] = {
    "unsigned": unsigned_jwt,
}


# --- services --------------------------------------------------------------------------------------------


def _python_module(module: str) -> Callable[[ServiceContext], Launch]:
    def build(ctx: ServiceContext) -> Launch:
        argv = [ctx.python, "-m", module, "--port", str(ctx.port)]
        if ctx.deps:
            argv += ["--upstream", next(iter(ctx.deps.values()))]
        return Launch(argv, env={"PYTHONPATH": str(PROJECT_ROOT)})

    return build


def bare_proxy_service(upstream: str) -> ServiceSpec:
    return ServiceSpec(
        f"bare->{upstream}", "bare aiohttp proxy", "proxy", _python_module("bench.bare_proxy"), needs=(upstream,)
    )


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    upstream backend {{
        server {upstream_hostport};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {upstream_hostport};
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def nginx_service(upstream: str) -> ServiceSpec:
    """nginx as MCP deployments configure it: keep-alive upstream, no buffering (SSE), Host rewritten."""

    def build(ctx: ServiceContext) -> Launch:
        nginx = ctx.binaries.get("nginx")
        if not nginx:
            raise Unavailable("nginx is not installed (apt-get install nginx-light)")
        hostport = ctx.deps[upstream].removeprefix("http://")
        conf = NGINX_CONF.format(workdir=ctx.workdir, upstream_hostport=hostport, port=ctx.port)
        workdir = str(ctx.workdir)
        argv = [nginx, "-p", workdir, "-e", f"{workdir}/error.log", "-c", f"{workdir}/nginx.conf"]
        return Launch(argv, files={"nginx.conf": conf})

    return ServiceSpec(f"nginx->{upstream}", "nginx", "proxy", build, needs=(upstream,))


def sidecar_command() -> list[str]:
    script = Path(sys.executable).parent / "mcp-auth-sidecar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]


def sidecar_service(
    upstream: str,
    *,
    variant: str = "gate",
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    after_start: Callable[[ServiceContext], Awaitable[None]] | None = None,
) -> ServiceSpec:
    """The sidecar as an operator runs it: ``mcp-auth-sidecar serve`` with flags, defaults otherwise.

    ``variant`` names the configuration (``gate``, ``gate-jwks``, ``broker-redis`` ...) and, with
    ``workers``, makes the service key unique: ``sidecar-<variant>[-w<N>]-><upstream>``.
    """

    def build(ctx: ServiceContext) -> Launch:
        argv = [
            *sidecar_command(), "serve",
            "--listen", f"127.0.0.1:{ctx.port}",
            "--upstream", ctx.deps[upstream],
            "--public-url", ctx.url,
            "--metrics-listen", f"127.0.0.1:{ctx.free_port()}",
            *(["--workers", str(workers)] if workers != 1 else []),
            *args,
        ]
        return Launch(argv, env=dict(env or {}))

    suffix = f"-w{workers}" if workers != 1 else ""
    label = f"sidecar {variant}" + (f" \N{MULTIPLICATION SIGN}{workers} workers" if workers != 1 else "")
    return ServiceSpec(f"sidecar-{variant}{suffix}->{upstream}", label, "proxy", build, needs=(upstream,),
                       after_start=after_start)


BACKENDS: list[ServiceSpec] = [
    ServiceSpec("aiohttp", "minimal aiohttp backend", "backend", _python_module("bench.backend")),
    ServiceSpec("sdk", "mcp SDK server", "backend", _python_module("bench.sdk_server")),
]

SERVICES: dict[str, ServiceSpec] = {spec.key: spec for spec in BACKENDS}
for _backend in ("aiohttp", "sdk"):
    for _spec in (nginx_service(_backend), bare_proxy_service(_backend), sidecar_service(_backend)):
        SERVICES[_spec.key] = _spec


# --- rows ------------------------------------------------------------------------------------------------

BACKEND_LABELS = {"aiohttp": "minimal aiohttp backend", "sdk": "mcp SDK server"}


def _rows_for(backend: str) -> list[Row]:
    sse = backend == "aiohttp"
    return [
        Row(f"direct/{backend}", "direct", "direct", backend, backend, sse=sse),
        Row(f"nginx/{backend}", "nginx", "nginx", backend, f"nginx->{backend}", sse=sse),
        Row(f"bare/{backend}", "bare aiohttp proxy", "bare", backend, f"bare->{backend}", sse=sse),
        Row(f"sidecar-gate/{backend}", "sidecar gate (decode-only)", "sidecar", backend,
            f"sidecar-gate->{backend}", sse=sse),
    ]


ROWS: list[Row] = [*_rows_for("aiohttp"), *_rows_for("sdk")]
