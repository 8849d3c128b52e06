"""``hive mcp --http``: streamable HTTP, loopback by default, a bearer token checked on every request."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
from typing import Any

import uvicorn
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .audit import SCOPE_CALLER_KEY

logger = logging.getLogger("hive_plugin_mcp.http")

MCP_PATH = "/mcp"


def fingerprint(token: str) -> str:
    """A short, stable name for a token in logs (never the token itself)."""
    return "token sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (scheme case-insensitive), else ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or any(c.isspace() for c in value):
        return None
    return value


def token_matches(header: str | None, token: str) -> bool:
    """True when ``header`` carries exactly ``token`` (compared in constant time)."""
    given = bearer_token(header)
    return given is not None and bool(token) and hmac.compare_digest(given.encode(), token.encode())


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer TOKEN`` when a token is set.

    A refused request gets 401 (no token) or 403 (a wrong one) before reaching the MCP server; an accepted
    one carries the token's fingerprint in ``scope["state"]`` so the audit log can name the caller.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if self.token:
            header = Headers(scope=scope).get("authorization")
            if not token_matches(header, self.token):
                status = 401 if bearer_token(header) is None else 403
                peer = (scope.get("client") or ("?", 0))[0]
                logger.warning("refused %s %s from %s: %s", scope.get("method"), scope.get("path"), peer,
                               "no bearer token" if status == 401 else "wrong bearer token")
                await _refuse(send, status)
                return
            state[SCOPE_CALLER_KEY] = fingerprint(self.token)
        else:
            state[SCOPE_CALLER_KEY] = "no token (loopback)"
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int) -> None:
    message = "this server needs a bearer token (Authorization: Bearer TOKEN)" if status == 401 else "wrong token"
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="hive"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bind(address: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the real address is known before serving."""
    family = socket.AF_INET6 if ":" in address.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address.strip("[]"), port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: ASGIApp, sock: socket.socket, **uvicorn_options: Any) -> None:
    """Serve ``app`` on an already bound socket with uvicorn until SIGINT/SIGTERM."""
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options)
    await uvicorn.Server(config).serve(sockets=[sock])
