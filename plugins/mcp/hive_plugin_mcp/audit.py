"""Who calls: every request an agent makes is logged with the caller's identity, what it asked and how it went.

The identity has two parts. The *transport* part is what the server can vouch for: on stdio the local user
and the parent process that started ``hive mcp``; on HTTP the peer address and which bearer token it showed
(as a fingerprint, never the token). The *client* part is the ``clientInfo`` the agent host declares (name and
version), which is informative only: a client may say anything there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import CallToolResult

logger = logging.getLogger("hive_plugin_mcp.audit")

CLIENT_INFO_META_KEY = "io.modelcontextprotocol/clientInfo"
#: Where the HTTP bearer check leaves the verified part of the identity, in the ASGI scope's ``state``.
SCOPE_CALLER_KEY = "hive_mcp_caller"

#: Methods logged at INFO (the others, such as pings and listings, at DEBUG).
AUDITED = {"tools/call", "resources/read", "subscriptions/listen"}


@attrs.frozen
class Caller:
    """Who made one request: ``transport`` (vouched for by the server) and ``client`` (as the client declares)."""

    transport: str
    client: str = "unknown client"

    def __str__(self) -> str:
        return f"{self.client} via {self.transport}"


def declared_client(ctx: ServerRequestContext[Any, Any]) -> str:
    """``name/version`` from the request's clientInfo (2026-07-28 carries it per request, earlier at initialize)."""
    info: Any = (ctx.meta or {}).get(CLIENT_INFO_META_KEY)
    if not isinstance(info, Mapping):
        params = ctx.session.client_params
        info = params.client_info.model_dump() if params is not None and params.client_info is not None else {}
    name, version = info.get("name"), info.get("version")
    if not isinstance(name, str) or not name:
        return "unknown client"
    label = name if not isinstance(version, str) or not version else f"{name}/{version}"
    return "".join(ch if ch.isprintable() else "?" for ch in label)[:100]  # never let a client forge log lines


def stdio_caller(transport: str) -> Callable[[ServerRequestContext[Any, Any]], Caller]:
    """Identity for stdio: the fixed local ``transport`` description plus the declared client."""

    def caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
        return Caller(transport, declared_client(ctx))

    return caller


def http_caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """Identity for HTTP: peer address and token fingerprint (set by the bearer check) plus the declared client."""
    request = ctx.request
    scope: Mapping[str, Any] = getattr(request, "scope", None) or {}
    client = scope.get("client") or ("?", 0)
    verified = (scope.get("state") or {}).get(SCOPE_CALLER_KEY, "no token")
    return Caller(f"http {client[0]}:{client[1]} {verified}", declared_client(ctx))


def _target(ctx: ServerRequestContext[Any, Any]) -> str:
    params = ctx.params or {}
    for key in ("name", "uri"):
        value = params.get(key)
        if isinstance(value, str):
            return f" {value[:200]!r}"
    return ""


class AuditMiddleware:
    """Logs every request with its caller, target, outcome and duration (``hive_plugin_mcp.audit`` logger)."""

    def __init__(self, caller: Callable[[ServerRequestContext[Any, Any]], Caller]) -> None:
        self.caller = caller

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:  # a notification (initialized, cancelled, progress)
            if ctx.method == "notifications/cancelled":
                logger.info("%s by %s", ctx.method, self.caller(ctx))
            return await call_next(ctx)
        level = logging.INFO if ctx.method in AUDITED else logging.DEBUG
        who = self.caller(ctx)
        started = time.monotonic()
        outcome = "ok"
        try:
            result = await call_next(ctx)
            if isinstance(result, CallToolResult) and result.is_error:
                outcome = "refused"
            return result
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = f"error {type(exc).__name__}"
            raise
        finally:
            logger.log(level, "%s%s by %s: %s in %.3fs", ctx.method, _target(ctx), who, outcome,
                       time.monotonic() - started)
