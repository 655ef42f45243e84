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

The rows of issue 7, and what each needs here:

* direct, nginx, the bare aiohttp proxy, the sidecar's gate (decode-only) on both backends;
* gate with JWKS verification (both backends): the ``jwks`` service (``bench/jwks.py``) serves the run's
  key set, the ``signed`` bearer is signed with it, the sidecar gets ``MCP_SIDECAR_JWKS_URL``,
  ``MCP_SIDECAR_ISSUER`` and ``MCP_SIDECAR_AUDIENCE``;
* broker with a warm grant, on real Redis (both backends) and on the memory store (aiohttp backend):
  ``bench/broker.py`` (Redis services whose ``after_start`` seeds the grant through the store API and
  whose ``counters`` give Redis commands per request) and ``bench/broker_memory.py`` (the launcher that
  seeds the memory store inside the sidecar's process);
* broker with many grants (aiohttp backend): its own Redis seeded with ``Options.filler_grants`` grants
  (100,000; 10,000 with ``--quick``) before the measured one, compared with the one-grant row;
* ``--workers 2`` (gate, aiohttp backend): CPU and RSS are summed/listed per process of the tree (the
  supervisor and both workers); all servers share CPU 0, so two workers add no capacity here, only their
  cost shows;
* gate with issue 15's ``tool_policy`` of ten rules, two with CEL conditions (``BENCH_POLICY``), both backends;
* FastMCP's proxy with JWT verification (SDK backend only: it speaks MCP to its backend, which the minimal
  backend does not): ``bench/fastmcp_proxy.py`` in its own venv ``bench/.venv-fastmcp`` (``bench/tools.py``
  makes it), verifying the ``signed`` bearer against the ``jwks`` service.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import broker, jwks
from bench.workload import unsigned_jwt


@dataclass(frozen=True)
class ServiceContext:
    key: str
    port: int
    workdir: Path
    deps: Mapping[str, str]  # service key -> base URL, for every key in ServiceSpec.needs
    binaries: Mapping[str, str | None]  # "nginx", "wrk" -> path, None when unavailable
    free_port: Callable[[], int]
    filler_grants: int = 0  # grants seeded before the measured one in the many-grants store

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
    latency: bool = True  # also measure added latency at the fixed rate (not for rows far slower than it)

    @property
    def proxied(self) -> bool:
        return self.target != self.backend


PROJECT_ROOT = Path(__file__).resolve().parent.parent

# --- bearers ---------------------------------------------------------------------------------------------

TOKENS: dict[str, Callable[[], str]] = {
    "unsigned": unsigned_jwt,
    "signed": jwks.signed_jwt,  # RS256 with the run's key, served by the ``jwks`` service
    # client tokens of the warm grants, known once their store was seeded (the runner asks after start)
    "broker-redis": lambda: broker.CLIENT_TOKENS["redis"],
    "broker-redis-many": lambda: broker.CLIENT_TOKENS["redis-many"],
    "broker-memory": lambda: broker.CLIENT_TOKENS["broker-memory"],
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
    env: Mapping[str, str] | Callable[[ServiceContext], Mapping[str, str]] | None = None,
    workers: int = 1,
    after_start: Callable[[ServiceContext], Awaitable[None]] | None = None,
    extra_needs: tuple[str, ...] = (),
    label: str | None = None,
) -> ServiceSpec:
    """The sidecar as an operator runs it: ``mcp-auth-sidecar serve`` with flags, defaults otherwise.

    ``variant`` names the configuration (``gate``, ``gate-jwks``, ``broker-redis`` ...) and, with
    ``workers``, makes the service key unique: ``sidecar-<variant>[-w<N>]-><upstream>``. ``env`` may be a
    function of the context (URLs of ``extra_needs`` services such as the JWKS server or Redis).
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
        return Launch(argv, env=dict((env(ctx) if callable(env) else env) or {}))

    suffix = f"-w{workers}" if workers != 1 else ""
    label = label or f"sidecar {variant}" + (f" \N{MULTIPLICATION SIGN}{workers} workers" if workers != 1 else "")
    return ServiceSpec(f"sidecar-{variant}{suffix}->{upstream}", label, "proxy", build,
                       needs=(upstream, *extra_needs), after_start=after_start)


# Issue 15's policy row: ten rules, two with CEL conditions. The workload's tools/list is selected by five of
# them (a scope rule, a claim rule and both CEL rules among them), so every kind of check runs per request.
BENCH_POLICY: list[dict[str, object]] = [
    {"tools": ["delete_*", "admin.*"], "scopes": ["mcp:admin"]},
    {"methods": ["resources/read"], "scopes": ["mcp:resources"]},
    {"methods": ["tools/list", "tools/call"], "scopes": ["mcp:tools"]},
    {"tools": ["*"], "claims": {"iss": "https://issuer.bench.invalid"}},
    {"methods": ["prompts/*"], "scopes": ["mcp:prompts"]},
    {"tools": ["write_*"], "scopes": ["mcp:write"]},
    {"methods": ["tools/*"], "claims": {"aud": "mcp-bench"}},
    {"tools": ["query_*"], "when": 'mcp.params.arguments.database != "prod"'},
    {"methods": ["tools/list"], "when": 'jwt.sub.startsWith("bench") && jwt.scope.contains("mcp:tools")'},
    {"methods": ["*"], "when": 'jwt.iss == "https://issuer.bench.invalid"'},
]


def policy_env(_: ServiceContext) -> dict[str, str]:
    import json

    return {"MCP_SIDECAR_TOOL_POLICY": json.dumps(BENCH_POLICY)}


def jwks_service() -> ServiceSpec:
    def build(ctx: ServiceContext) -> Launch:
        argv = [ctx.python, "-m", "bench.jwks", "--port", str(ctx.port), "--file", str(ctx.workdir / "jwks.json")]
        return Launch(argv, env={"PYTHONPATH": str(PROJECT_ROOT)}, files={"jwks.json": jwks.jwks_document()})

    return ServiceSpec("jwks", "JWKS of the run's signing key", "idp", build)


def jwks_env(ctx: ServiceContext) -> dict[str, str]:
    return {
        "MCP_SIDECAR_JWKS_URL": ctx.deps["jwks"] + jwks.JWKS_PATH,
        "MCP_SIDECAR_ISSUER": jwks.ISSUER,
        "MCP_SIDECAR_AUDIENCE": jwks.AUDIENCE,
    }


def redis_service(key: str, label: str, filler: Callable[[ServiceContext], int]) -> ServiceSpec:
    """A ``redis-server`` on a free loopback port, no persistence, seeded once it listens."""

    def build(ctx: ServiceContext) -> Launch:
        server = ctx.binaries.get("redis-server")
        if not server:
            raise Unavailable("redis-server is not installed (apt-get install redis-server)")
        return Launch([server, "--port", str(ctx.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(ctx.workdir), "--logfile", ""])

    async def after_start(ctx: ServiceContext) -> None:
        await broker.redis_seeder(key, tuple(sidecar_command()), lambda: filler(ctx))(ctx.url)

    async def counters(ctx: ServiceContext) -> dict[str, float]:
        return await broker.redis_counters(ctx.port)

    return ServiceSpec(key, label, "store", build, after_start=after_start, counters=counters)


def broker_redis_env(store: str) -> Callable[[ServiceContext], dict[str, str]]:
    def env(ctx: ServiceContext) -> dict[str, str]:
        return broker.broker_env(broker.encryption_keys(tuple(sidecar_command())), {
            "MCP_SIDECAR_STORE": "redis", "MCP_SIDECAR_REDIS_URL": broker.redis_url(ctx.deps[store]),
        })

    return env


def broker_memory_service(upstream: str) -> ServiceSpec:
    """The broker on the memory store, through the bench-only launcher that seeds the grant in-process."""

    def build(ctx: ServiceContext) -> Launch:
        argv = [ctx.python, "-m", "bench.broker_memory", "--port", str(ctx.port), "--upstream", ctx.deps[upstream],
                "--token-file", str(ctx.workdir / "client-token")]
        env = broker.broker_env(broker.encryption_keys(tuple(sidecar_command())), {"MCP_SIDECAR_STORE": "memory"})
        return Launch(argv, env={**env, "PYTHONPATH": str(PROJECT_ROOT)})

    async def after_start(ctx: ServiceContext) -> None:
        broker.CLIENT_TOKENS["broker-memory"] = broker.read_token_file(ctx.workdir / "client-token")

    return ServiceSpec(f"sidecar-broker-memory->{upstream}", "sidecar broker, memory store", "proxy", build,
                       needs=(upstream,), after_start=after_start)


FASTMCP_PYTHON = "fastmcp-python"  # key in ServiceContext.binaries: the python of bench/.venv-fastmcp
FASTMCP_PROBLEM = "fastmcp-problem"  # and why it is missing, when it is


def fastmcp_service(upstream: str) -> ServiceSpec:
    def build(ctx: ServiceContext) -> Launch:
        python = ctx.binaries.get(FASTMCP_PYTHON)
        if not python:
            raise Unavailable(ctx.binaries.get(FASTMCP_PROBLEM) or "FastMCP is not installed in bench/.venv-fastmcp")
        argv = [python, str(PROJECT_ROOT / "bench" / "fastmcp_proxy.py"), "--port", str(ctx.port),
                "--upstream", ctx.deps[upstream], "--jwks-url", ctx.deps["jwks"] + jwks.JWKS_PATH,
                "--issuer", jwks.ISSUER, "--audience", jwks.AUDIENCE]
        return Launch(argv, env={"FASTMCP_SHOW_CLI_BANNER": "false", "FASTMCP_LOG_LEVEL": "WARNING"})

    return ServiceSpec(f"fastmcp->{upstream}", "FastMCP proxy + JWT verification", "proxy", build,
                       needs=(upstream, "jwks"), ready_timeout=60.0)


BACKENDS: list[ServiceSpec] = [
    ServiceSpec("aiohttp", "minimal aiohttp backend", "backend", _python_module("bench.backend")),
    ServiceSpec("sdk", "mcp SDK server", "backend", _python_module("bench.sdk_server")),
]

SERVICES: dict[str, ServiceSpec] = {spec.key: spec for spec in BACKENDS}
for _spec in (
    jwks_service(),
    redis_service("redis", "Redis (one grant)", lambda _: 0),
    redis_service("redis-many", "Redis (many grants)", lambda ctx: ctx.filler_grants),
    broker_memory_service("aiohttp"),
    sidecar_service("aiohttp", workers=2),
    sidecar_service("aiohttp", variant="broker-redis-many", args=("--mode", "broker"),
                    env=broker_redis_env("redis-many"), extra_needs=("redis-many",),
                    label="sidecar broker, Redis, {grants} grants"),
    fastmcp_service("sdk"),
):
    SERVICES[_spec.key] = _spec
for _backend in ("aiohttp", "sdk"):
    for _spec in (
        nginx_service(_backend), bare_proxy_service(_backend), sidecar_service(_backend),
        sidecar_service(_backend, variant="gate-jwks", env=jwks_env, extra_needs=("jwks",),
                        label="sidecar gate + JWKS verification"),
        sidecar_service(_backend, variant="broker-redis", args=("--mode", "broker"), env=broker_redis_env("redis"),
                        extra_needs=("redis",), label="sidecar broker, Redis, 1 grant"),
        sidecar_service(_backend, variant="gate-policy", env=policy_env,
                        label="sidecar gate + 10-rule tool policy (2 CEL)"),
    ):
        SERVICES[_spec.key] = _spec


# --- rows ------------------------------------------------------------------------------------------------

BACKEND_LABELS = {"aiohttp": "minimal aiohttp backend", "sdk": "mcp SDK server"}


def _rows_for(backend: str) -> list[Row]:
    sse = backend == "aiohttp"
    rows = [
        Row(f"direct/{backend}", "direct", "direct", backend, backend, sse=sse),
        Row(f"nginx/{backend}", "nginx", "nginx", backend, f"nginx->{backend}", sse=sse),
        Row(f"bare/{backend}", "bare aiohttp proxy", "bare", backend, f"bare->{backend}", sse=sse),
        Row(f"sidecar-gate/{backend}", "sidecar gate (decode-only)", "sidecar", backend,
            f"sidecar-gate->{backend}", sse=sse),
        Row(f"sidecar-gate-jwks/{backend}", "sidecar gate + JWKS verification", "sidecar", backend,
            f"sidecar-gate-jwks->{backend}", token="signed"),
        Row(f"sidecar-gate-policy/{backend}", "sidecar gate + 10-rule tool policy (2 CEL)", "sidecar", backend,
            f"sidecar-gate-policy->{backend}"),
    ]
    if backend == "aiohttp":
        rows.append(Row("sidecar-gate-w2/aiohttp", "sidecar gate, --workers 2", "sidecar", backend,
                        "sidecar-gate-w2->aiohttp"))
        rows.append(Row("sidecar-broker-memory/aiohttp", "sidecar broker, memory store", "sidecar", backend,
                        "sidecar-broker-memory->aiohttp", token="broker-memory"))
    rows.append(Row(f"sidecar-broker-redis/{backend}", "sidecar broker, Redis, 1 grant", "sidecar", backend,
                    f"sidecar-broker-redis->{backend}", token="broker-redis"))
    if backend == "aiohttp":
        rows.append(Row("sidecar-broker-redis-many/aiohttp", "sidecar broker, Redis, {grants} grants", "sidecar",
                        backend, "sidecar-broker-redis-many->aiohttp", token="broker-redis-many"))
    else:
        # tens of req/s at most here: a fixed 200 req/s would only measure its queue, for minutes
        rows.append(Row("fastmcp/sdk", "FastMCP proxy + JWT verification", "peer", backend, "fastmcp->sdk",
                        token="signed", latency=False))
    return rows


ROWS: list[Row] = [*_rows_for("aiohttp"), *_rows_for("sdk")]
