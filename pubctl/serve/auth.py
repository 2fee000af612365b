"""Bearer tokens, and the rule that an open server only listens on loopback."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path


class TokenError(ValueError):
    """The configured tokens cannot be used."""


def _tokens_of(lines: Iterable[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def load_tokens(token_file: Path | None, env_value: str | None) -> tuple[str, ...]:
    """Tokens from ``token_file`` (one per line; blank lines and ``#`` comments are
    skipped) and from ``PUBCTL_FEED_TOKENS`` (comma-separated); all are valid.

    A token file that holds no token is refused: serving openly by accident because a
    secret file came out empty is worse than not starting.
    """
    tokens: list[str] = []
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read {token_file}: {exc}") from None
        from_file = _tokens_of(text.splitlines())
        if not from_file:
            raise TokenError(f"{token_file} holds no token (one per line)")
        tokens += from_file
    if env_value:
        tokens += _tokens_of(env_value.split(","))
    for token in tokens:
        if any(c.isspace() or not c.isprintable() for c in token) or not token.isascii():
            raise TokenError("a token may hold only printable ASCII characters without spaces")
    return tuple(dict.fromkeys(tokens))


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


class TokenCheck:
    """Checks ``Authorization: Bearer T`` headers in constant time.

    Each offered token is hashed and compared with every configured token's hash with
    ``hmac.compare_digest``, without stopping at the first match, so the time taken
    says nothing about which token or how much of one was right.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """True when no token is configured, or the header carries a valid one."""
        if not self._digests:
            return True
        if not authorization:
            return False
        scheme, _, offered = authorization.partition(" ")
        if scheme.lower() != "bearer" or not offered.strip():
            return False
        digest = hashlib.sha256(offered.strip().encode("utf-8", "replace")).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched
