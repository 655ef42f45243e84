"""The store's key layout (DESIGN §5): every key name, all keys of one grant under its hash tag."""

from __future__ import annotations

from sidecar.store.records import token_hash

# ---------------------------------------------------------------------------------------------------------
# Key layout (DESIGN §5)


class KeyLayout:
    """Builds every key name. All keys of one grant share the hash tag ``{<grant-id>}``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{}: "):
            raise ValueError("the key prefix must be non-empty without '{', '}', ':' or spaces")
        self.prefix = prefix

    def grant_base(self, grant_id: str) -> str:
        return f"{self.prefix}:{{{grant_id}}}"

    def grant(self, grant_id: str) -> str:
        return f"{self.grant_base(grant_id)}:grant"

    def index(self, grant_id: str) -> str:
        """Sorted set of the grant's token keys (member ``at:<sha>`` …, score = expiry in ms)."""
        return f"{self.grant_base(grant_id)}:idx"

    def lock(self, grant_id: str) -> str:
        return f"{self.grant_base(grant_id)}:lock"

    def member_key(self, grant_id: str, member: str) -> str:
        return f"{self.grant_base(grant_id)}:{member}"

    def client(self, client_id: str) -> str:
        return f"{self.prefix}:client:{client_id}"

    def code(self, code: str) -> str:
        return f"{self.prefix}:code:{token_hash(code)}"

    def pending(self, state: str) -> str:
        # The state travels in URLs; it is hashed here like a token so the key list shows no live value.
        return f"{self.prefix}:pending:{token_hash(state)}"

    def clients(self) -> str:
        """Sorted set of live registrations (member client id, score = expiry in ms): the global cap."""
        return f"{self.prefix}:clients"

    def consent(self, subject: str, client_id: str) -> str:
        return f"{self.prefix}:consent:{token_hash(subject + chr(0) + client_id)}"


def access_member(digest: str) -> str:
    return f"at:{digest}"


def refresh_member(digest: str) -> str:
    return f"rt:{digest}"


def successor_member(digest: str) -> str:
    """Where the pair that replaced refresh token ``digest`` is kept (encrypted) during the replay grace."""
    return f"rtnext:{digest}"
