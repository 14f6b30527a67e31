"""Authentication and connection policy: JWT (PyJWT), the token's sources, Origin checks.

An ``authenticate(scope)`` hook returns a user id, an ``Identity`` (a user id with an expiry),
or None for an anonymous connection; it raises ``Denied`` to refuse before the upgrade. This
module provides the JWT one: ``jwt_authenticator(secret=...)`` or ``(public_key=...)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from .exceptions import Denied

#: the subprotocol entry that carries a token: ``bearer.<jwt>`` (browsers cannot set headers)
SUBPROTOCOL_TOKEN_PREFIX = "bearer."
#: the subprotocol a client offers beside its token entry, which the server selects
SUBPROTOCOL = "fasthub"
#: the same protocol with envelopes in MessagePack (binary frames), selected when offered
MSGPACK_SUBPROTOCOL = "fasthub.msgpack"

_HMAC = ["HS256", "HS384", "HS512"]
_ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is: a user id, and when its credential expires (Unix time, or None)."""

    user_id: str
    expires_at: float | None = None
    claims: Mapping[str, Any] | None = None


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def token_from_scope(scope: Mapping[str, Any], query_param: str = "token") -> str | None:
    """The bearer token of a request, looked for in this order:

    1. ``Authorization: Bearer <token>``;
    2. the ``token`` query parameter (``?token=<token>``);
    3. a ``Sec-WebSocket-Protocol`` entry ``bearer.<token>`` (for browsers, which cannot set
       headers; offer ``["fasthub", "bearer.<token>"]`` and the server selects ``fasthub``).
    """
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    query = scope.get("query_string", b"")
    if query:
        values = parse_qs(query.decode("latin-1")).get(query_param)
        if values and values[0]:
            return str(values[0])
    for proto in scope.get("subprotocols", ()) or ():
        if proto.startswith(SUBPROTOCOL_TOKEN_PREFIX) and len(proto) > len(SUBPROTOCOL_TOKEN_PREFIX):
            return str(proto[len(SUBPROTOCOL_TOKEN_PREFIX) :])
    return None


class JWTAuthenticator:
    """``authenticate`` hook that verifies a JWT with PyJWT.

    Refusals happen before the upgrade: 401 for a missing (when required), malformed, badly
    signed, expired or not-yet-valid token, or one for another audience or issuer; 403 for a
    valid token that ``authorize(identity)`` refuses. The user id is the ``user_claim`` (``sub``).
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | None = None,
        algorithms: Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | None = None,
        user_claim: str = "sub",
        allow_anonymous: bool = False,
        leeway: float = 0.0,
        authorize: Callable[[Identity], bool] | None = None,
        query_param: str = "token",
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ValueError("give exactly one of secret (HS256) or public_key (RS256/ES256/...)")
        if secret is not None and not secret:
            raise ValueError("the JWT secret is empty")
        self.key: Any = secret if secret is not None else public_key
        # Never HMAC with a public key: that is the algorithm-confusion attack.
        default = _HMAC if secret is not None else _ASYMMETRIC
        self.algorithms = list(algorithms) if algorithms is not None else default
        if public_key is not None and any(a.startswith("HS") for a in self.algorithms):
            raise ValueError("HMAC algorithms cannot be used with a public key")
        self.audience = audience if audience is None or isinstance(audience, str) else list(audience)
        self.issuer = issuer
        self.user_claim = user_claim
        self.allow_anonymous = allow_anonymous
        self.leeway = leeway
        self.authorize = authorize
        self.query_param = query_param

    def __call__(self, scope: Mapping[str, Any]) -> Identity | None:
        token = token_from_scope(scope, self.query_param)
        if token is None:
            if self.allow_anonymous:
                return None
            raise Denied(401, "a token is required")
        identity = self.verify(token)
        if self.authorize is not None and not self.authorize(identity):
            raise Denied(403, "this token is not allowed here")
        return identity

    def verify(self, token: str) -> Identity:
        """Check a token (also used for a ``refresh`` message); ``Denied(401)`` when it fails."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise Denied(401, "token expired") from None
        except jwt.ImmatureSignatureError:
            raise Denied(401, "token not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Denied(401, "token audience refused") from None
        except jwt.InvalidIssuerError:
            raise Denied(401, "token issuer refused") from None
        except jwt.InvalidSignatureError:
            raise Denied(401, "bad token signature") from None
        except jwt.PyJWTError:
            raise Denied(401, "malformed token") from None
        user = claims.get(self.user_claim)
        if isinstance(user, bool) or not isinstance(user, (str, int)) or user == "":
            raise Denied(401, f"token has no usable {self.user_claim!r} claim")
        exp = claims.get("exp")
        expires_at = float(exp) + self.leeway if isinstance(exp, (int, float)) else None
        return Identity(str(user), expires_at, claims)


def jwt_authenticator(**kwargs: Any) -> JWTAuthenticator:
    """``create_app(hub, authenticate=jwt_authenticator(secret="..."))``; see ``JWTAuthenticator``."""
    return JWTAuthenticator(**kwargs)


class OriginPolicy:
    """Allow-list of ``Origin`` values (``fnmatch`` patterns such as ``https://*.example.com``).

    A request without ``Origin`` (not a browser) is allowed: the check exists to stop other
    web pages from opening sockets with a visitor's cookies (cross-site WebSocket hijacking).
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = [a.rstrip("/").lower() for a in allowed]

    def allows(self, scope: Mapping[str, Any]) -> bool:
        origin = _header(scope, b"origin")
        if origin is None:
            return True
        value = origin.decode("latin-1").rstrip("/").lower()
        return any(fnmatch.fnmatchcase(value, pattern) for pattern in self.allowed)
