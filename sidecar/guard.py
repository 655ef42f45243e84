"""The request guard: ``tool_policy`` enforcement, ``tools/list`` filtering and the ``mcp.request`` audit event.

It exists only when a policy or the audit trail is configured; without both, the relay parses nothing and this
module is never on the request path (issue 15: "without a policy, nothing is parsed and nothing costs").

Per request: :meth:`Guard.start` -> the relay authenticates -> :meth:`Guard.admit` reads the JSON-RPC body
(whole, under :data:`~sidecar.mcp_message.MAX_POLICY_BODY_BYTES` and :data:`BODY_READ_TIMEOUT_SECONDS`),
checks ``Mcp-Method``/``Mcp-Name`` against it and asks the policy about every message; a denied message stops
the whole request before anything reaches the backend -> the relay streams the answer through the ticket's
filter -> :meth:`Guard.finish` counts and writes the audit line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from sidecar.audit import AuditLog, arguments_hash
from sidecar.auth import Identity
from sidecar.challenge import (
    AccessDenied,
    AuthProblem,
    BadRequest,
    HTTPProblem,
    InsufficientScope,
    PayloadTooLarge,
    RequestTimeout,
)
from sidecar.mcp_message import (
    MAX_POLICY_BODY_BYTES,
    Message,
    MessageError,
    check_headers,
    parse_body,
    tools_list_ids,
)
from sidecar.metrics import Metrics
from sidecar.policy import Call, Caller, Decision, Outcome, Policy, needed_scopes
from sidecar.tokens import scopes_of
from sidecar.tool_filter import ANY_ID, SseFilter, filter_json

if TYPE_CHECKING:
    from sidecar.refresh import CredentialBroker

# A client that has sent its headers gets this long to send a body the policy must read; a slow-drip client
# gets 408 instead of holding a connection and a buffer open indefinitely.
BODY_READ_TIMEOUT_SECONDS: Final = 30.0
# Audit-only (no policy): bodies up to this size are parsed for method/tool; larger ones stream untouched.
AUDIT_PARSE_BYTES: Final = 256 * 1024
# Broker subjects remembered (one per grant, replaced when the grant record changes).
SUBJECT_CACHE_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is calling, for the policy (``claims``, ``scopes``) and the audit line (``sub``, ``client_id``)."""

    sub: str | None
    client_id: str | None
    claims: Mapping[str, Any]
    scopes: frozenset[str]
    caller: Caller = field(init=False, compare=False, repr=False)  # the policy's view, built once per subject

    def __post_init__(self) -> None:
        object.__setattr__(self, "caller", Caller(self.claims, self.scopes))


SubjectOf = Callable[[Identity], Awaitable[Subject]]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class GateSubjects:
    """Gate mode: the token's own claims; the client is ``azp`` (OIDC) or ``client_id`` (RFC 9068).

    The authenticator hands out one claims object per cached token, so the Subject is remembered per claims
    object (held strongly, so its identity cannot be reused while remembered)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Mapping[str, Any], Subject]] = {}

    async def __call__(self, identity: Identity) -> Subject:
        claims = identity.claims
        hit = self._seen.get(id(claims))
        if hit is not None and hit[0] is claims:
            return hit[1]
        client = _str(claims.get("azp")) or _str(claims.get("client_id"))
        subject = Subject(_str(claims.get("sub")), client, claims, scopes_of(claims))
        if len(self._seen) >= SUBJECT_CACHE_ENTRIES:
            self._seen.pop(next(iter(self._seen)))
        self._seen[id(claims)] = (claims, subject)
        return subject



class BrokerSubjects:
    """Broker mode: the grant's identity claims, with ``scope`` set to the scopes the user granted."""

    def __init__(self, credentials: CredentialBroker) -> None:
        self._credentials = credentials
        self._tokens = GateSubjects()
        # The Subject built from the grant object the credential cache returned last: while that cache hands
        # out the same object, the claims object stays the same too (the policy's CEL cache is keyed on it).
        self._last: dict[str, tuple[Any, Subject]] = {}

    async def __call__(self, identity: Identity) -> Subject:
        if identity.grant_id is None:  # client_token: id_token: the bearer is the IdP's id_token
            return await self._tokens(identity)
        grant = await self._credentials.current(identity.grant_id)  # cached: the resolver reads it again
        seen = self._last.get(grant.grant_id)
        if seen is not None and seen[0] is grant:
            return seen[1]
        claims = {**grant.claims, "scope": " ".join(grant.scopes)}
        subject = Subject(grant.subject, grant.client_id, claims, frozenset(grant.scopes))
        if len(self._last) >= SUBJECT_CACHE_ENTRIES:
            self._last.pop(next(iter(self._last)))
        self._last[grant.grant_id] = (grant, subject)
        return subject


class Ticket:
    """What the guard knows about one request, from start to the last byte of the answer."""

    __slots__ = (
        "args_hash", "body", "decision", "list_ids", "messages", "reason", "request_bytes", "response_bytes",
        "started", "status", "subject", "visible",
    )

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.subject: Subject | None = None
        self.body: bytes | None = None
        self.messages: tuple[Message, ...] = ()
        self.decision = "allow"
        self.reason: str | None = None
        self.list_ids: list[Any] = []
        self.visible: Callable[[str], bool] | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        self.status = 0
        self.args_hash: list[str] | None = None

    # --- used by the relay while it answers ---

    def filters(self) -> bool:
        return bool(self.list_ids)

    def filter_body(self, body: bytes) -> bytes:
        if self.list_ids and self.visible is not None:
            body = filter_json(body, self.list_ids, self.visible)
        self.response_bytes += len(body)
        return body

    def stream_filter(self, content_type: str) -> SseFilter | None:
        # RFC 9110 §8.3.1: media types are case-insensitive ("Text/Event-Stream" is SSE too, never read whole).
        if self.list_ids and self.visible is not None and content_type.lower().startswith("text/event-stream"):
            return SseFilter(self.list_ids, self.visible)
        return None

    def fail(self, problem: HTTPProblem) -> None:
        self.decision = "deny"
        if self.reason is None:
            self.reason = getattr(problem, "reason", None) or problem.error


class ToolLabels:
    """Maps tool names to a bounded label set: the first ``limit`` distinct names, then ``other``."""

    def __init__(self, limit: int = 100, max_chars: int = 64) -> None:
        self._limit = limit
        self._max_chars = max_chars
        self._known: dict[str, str] = {}

    def __call__(self, tool: str | None) -> str:
        if tool is None:
            return "other"
        label = self._known.get(tool)
        if label is not None:
            return label
        if len(self._known) >= self._limit or len(tool) > self._max_chars or not tool.isprintable():
            return "other"
        self._known[tool] = tool
        return tool


class Guard:
    def __init__(
        self,
        *,
        policy: Policy | None,
        hide_denied_tools: bool,
        subject_of: SubjectOf,
        metrics: Metrics,
        audit: AuditLog | None = None,
        audit_arguments: bool = False,
    ) -> None:
        self._policy = policy
        self._hide = hide_denied_tools and policy is not None
        self._subject_of = subject_of
        self._metrics = metrics
        self._audit = audit
        self._audit_arguments = audit_arguments
        self._labels = ToolLabels()
        self._counters: dict[tuple[str, str], Any] = {}

    def start(self) -> Ticket:
        return Ticket()

    async def admit(self, ticket: Ticket, request: web.Request, identity: Identity) -> None:
        """Decide the request; raises the 400/403/408/413 problem that answers it instead of the backend."""
        subject = ticket.subject = await self._subject_of(identity)
        policy = self._policy
        if request.method != "POST" and not request.body_exists:
            if self._hide and policy is not None and request.method == "GET" and "Last-Event-ID" in request.headers:
                # A resumed stream replays the events of an earlier POST, tools/list answers included (MCP
                # "Resumability and Redelivery"): filtered like the POST's own answer, whatever their ids.
                caller = Caller(subject.claims, subject.scopes)
                ticket.list_ids = [ANY_ID]
                ticket.visible = lambda tool: policy.visible(caller, tool)
            return  # GET (the server's SSE stream), DELETE (session end): no JSON-RPC message to judge
        length = request.content_length
        if policy is None and (length is None or length > AUDIT_PARSE_BYTES):
            ticket.request_bytes = length or 0
            return
        body = ticket.body = await _read_body(request)
        ticket.request_bytes = len(body)
        try:
            # Every Content-Encoding field, not the first: a later "gzip" is what a decoding server would apply.
            codings = {c.strip().lower() for v in request.headers.getall("Content-Encoding", ()) for c in v.split(",")}
            if codings - {"identity", ""}:
                raise MessageError("a compressed request body cannot be checked against the tool policy")
            messages = ticket.messages = parse_body(body)
            if policy is not None:
                headers = request.headers
                check_headers(messages, headers.getall("Mcp-Method", ()), headers.getall("Mcp-Name", ()))
        except MessageError as exc:
            if policy is None:
                return  # audit only: the backend answers whatever this is
            ticket.reason = "bad_request"
            raise BadRequest(f"{exc}; requests must be JSON-RPC when a tool policy is set") from None
        if self._audit_arguments:
            ticket.args_hash = [
                arguments_hash(m.params.get("arguments")) for m in messages if m.tool is not None and
                isinstance(m.params, dict)
            ]
        if policy is None:
            return
        caller = subject.caller
        denied: list[Decision] = []
        for msg in messages:
            if msg.method is None:
                continue  # a response to the server (sampling, elicitation): not a call
            decision = policy.decide(caller, Call(msg.method, msg.tool, msg.params if msg.params is not None else {}))
            if msg.tool is not None:
                self._count(msg.tool, decision)
            if decision.outcome is not Outcome.ALLOW:
                denied.append(decision)
        if denied:
            if any(d.outcome is Outcome.ACCESS_DENIED for d in denied):
                ticket.reason = next(d.reason for d in denied if d.outcome is Outcome.ACCESS_DENIED)
                raise AccessDenied("the tool policy does not allow this call for this user")
            ticket.reason = "insufficient_scope"
            # MCP 2025-11-25 "Scope challenge handling": the challenge names the scopes the operation needs, so
            # the client can re-authorize with them (step-up).
            raise InsufficientScope(
                "this call needs more scopes; re-authorize with the scopes in the challenge",
                scope=needed_scopes(denied),
            )
        if self._hide:
            ids = tools_list_ids(messages)
            if ids:
                ticket.list_ids = ids
                ticket.visible = lambda tool: policy.visible(caller, tool)

    def _count(self, tool: str, decision: Decision) -> None:
        key = (self._labels(tool), decision.outcome.value)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self._metrics.tool_calls.labels(*key)
        child.inc()

    def finish(self, ticket: Ticket, request: web.Request, status: int) -> None:
        if self._audit is None:
            return
        subject = ticket.subject
        messages = ticket.messages
        calls = [m for m in messages if m.method is not None] or list(messages)
        batch = len(messages) > 1
        fields: dict[str, Any] = {
            "sub": subject.sub if subject else None,
            "client_id": subject.client_id if subject else None,
            "session_id": request.headers.get("Mcp-Session-Id"),
            "protocol_version": request.headers.get("MCP-Protocol-Version"),
            "method": [m.method for m in calls] if batch else (calls[0].method if calls else None),
            "tool": [m.tool for m in calls] if batch else (calls[0].tool if calls else None),
            "jsonrpc_id": [m.id for m in calls] if batch else (calls[0].id if calls else None),
            "decision": ticket.decision,
            "reason": ticket.reason,
            "status": status,
            "duration_ms": round((time.perf_counter() - ticket.started) * 1000, 3),
            "request_bytes": ticket.request_bytes,
            "response_bytes": ticket.response_bytes,
            "remote": request.remote,
        }
        if batch:
            fields["batch"] = len(messages)
        if ticket.args_hash:
            fields["arguments_sha256"] = ticket.args_hash if batch else ticket.args_hash[0]
        self._audit.emit("mcp.request", fields)


async def _read_body(request: web.Request) -> bytes:
    """The whole body, under a size cap and a deadline (a policy cannot judge half a message)."""
    length = request.content_length
    if length is not None and length > MAX_POLICY_BODY_BYTES:
        raise PayloadTooLarge(f"the request body is larger than {MAX_POLICY_BODY_BYTES} bytes")
    if length is not None and request.content.is_eof():
        # All of it arrived with the headers (the usual small JSON-RPC message): taken from the buffer as it is,
        # without request.read()'s two awaits and copy through a bytearray (the app sets no client_max_size).
        return request.content.read_nowait()
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_SECONDS):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_POLICY_BODY_BYTES:
                    raise PayloadTooLarge(f"the request body is larger than {MAX_POLICY_BODY_BYTES} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {BODY_READ_TIMEOUT_SECONDS:g} s") from None
    return b"".join(chunks)


def problem_reason(problem: HTTPProblem) -> str:
    return problem.reason if isinstance(problem, AuthProblem) else problem.error
