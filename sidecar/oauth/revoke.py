"""Token revocation (RFC 7009) for the client's access and refresh tokens.

* §2.1: POST, form-encoded ``token`` (required) and ``token_type_hint`` (optional; we find the type from the
  token itself). "The authorization server first validates the client credentials (in case of a
  confidential client) and then verifies whether the token was issued to the client making the revocation
  request": a token of another client is refused with ``invalid_grant`` (as Authlib does).
* §2.1: revoking a refresh token "SHOULD also invalidate all access tokens based on the same authorization
  grant": the store deletes the whole grant.
* §2.2: "The authorization server responds with HTTP status code 200 if the token has been revoked
  successfully or if the client submitted an invalid token" (unknown tokens are not an error).
* The in-process caches of the request path forget the token/grant at once; other replicas within their
  ``token_cache_seconds`` bound (DESIGN §13).
"""

from __future__ import annotations

import logging

from aiohttp import web

from sidecar.audit import record
from sidecar.keys import BROKER_AUTH, CREDENTIALS
from sidecar.oauth.common import check_rate, secure_equal
from sidecar.oauth.context import oauth, store_down, store_of
from sidecar.oauth.errors import NO_STORE, InvalidGrant, InvalidRequest, Problem
from sidecar.oauth.token import authenticated_client, read_form
from sidecar.store.base import RecordCorrupt, StoreUnavailable, parse_client_token

log = logging.getLogger("sidecar.oauth.revoke")


async def handle(request: web.Request) -> web.Response:
    try:
        # Rate limited like /token: each request may cost an outbound client metadata fetch.
        check_rate(request, oauth(request).limits["revoke"])
        form = await read_form(request)
        client = await authenticated_client(request, form)
        token = form.get("token")
        if token is None:
            raise InvalidRequest("token is missing")
        parsed = parse_client_token(token)
        if parsed is not None:
            store = store_of(request)
            try:
                grant = await store.get_grant(parsed.grant_id)
                if grant is not None:
                    if not secure_equal(grant.client_id, client.client_id):
                        raise InvalidGrant("the token was issued to another client")
                    revoked = await store.revoke_token(token)
                    if revoked:
                        log.info("token revoked", extra={"grant": parsed.grant_id, "kind": parsed.kind})
                        record(request.app, "oauth.revoke", grant=parsed.grant_id, sub=grant.subject,
                               client_id=grant.client_id, outcome=f"{parsed.kind}_revoked", remote=request.remote)
            except StoreUnavailable as exc:
                raise store_down(request, "revoke_token", exc) from exc
            except RecordCorrupt:
                pass
            if BROKER_AUTH in request.app:
                request.app[BROKER_AUTH].forget(token)
            if parsed.kind == "refresh" and CREDENTIALS in request.app:
                request.app[CREDENTIALS].forget(parsed.grant_id)
    except Problem as err:
        response = err.response()
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
    return web.Response(status=200, headers={**NO_STORE, "Access-Control-Allow-Origin": "*"})
