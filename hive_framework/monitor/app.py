"""The Hive Monitor's web app (Starlette) and the uvicorn server that runs it inside ``hive nexus``.

Reading is open to whoever reaches the address (``127.0.0.1`` by default); actions (retry, cancel,
pause/resume, broadcast) need ``HIVE_MONITOR_TOKEN`` as ``Authorization: Bearer TOKEN`` or ``X-Hive-Token``,
and are refused when no token is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import wire
from ..errors import HiveError, no_such_task
from ..models import TaskStatus
from .collector import Monitor

if TYPE_CHECKING:
    from ..broker import MessageBroker

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 15.0
#: Largest request body an action accepts.
MAX_BODY = 64 * 1024
#: Longest a broadcast action waits for replies, seconds.
MAX_WAIT = 10.0
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


class _Guard:
    """Security headers on every response and, when bound to loopback, only loopback ``Host`` names
    (so a page on another site cannot read the API through DNS rebinding)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: set[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed_hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
            if name not in self.allowed_hosts:
                await _error(400, f"Host {host!r} is not allowed; use http://127.0.0.1:PORT/")(scope, receive, send)
                return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_secure)


def create_app(monitor: Monitor, *, allowed_hosts: set[str] | None = None) -> ASGIApp:
    """The Starlette app over ``monitor``: the page, ``/api/...``, ``/api/stream`` (SSE) and ``/metrics``."""
    broker = monitor.broker
    config = monitor.config

    def authorized(request: Request) -> JSONResponse | None:
        """``None`` when the request carries the configured token, else the refusal to send."""
        token = config.monitor_token
        if not token:
            return _error(403, "actions are disabled: set HIVE_MONITOR_TOKEN for the nexus")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            given = request.headers.get("x-hive-token", "")
        if not given.strip():
            return _error(401, "this action needs the monitor token (Authorization: Bearer TOKEN)",
                          **{"WWW-Authenticate": 'Bearer realm="hive-monitor"'})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _error(403, "wrong monitor token")
        return None

    def action(func: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            refusal = authorized(request)
            if refusal is not None:
                logger.warning("monitor: refused %s %s from %s (%s)", request.method, request.url.path,
                               request.client.host if request.client else "?", refusal.status_code)
                return refusal
            try:
                return await func(request)
            except HiveError as exc:
                return _error(400, str(exc))

        return guarded

    async def body_json(request: Request) -> dict[str, Any]:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise HiveError(f"request body over {MAX_BODY} bytes")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HiveError(f"request body over {MAX_BODY} bytes")
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise HiveError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HiveError("the body must be a JSON object")
        return value

    def who(request: Request) -> str:
        return request.client.host if request.client else "?"

    # --- pages and reading -------------------------------------------------------------------------------

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def snapshot(request: Request) -> Response:
        return JSONResponse(await monitor.snapshot())

    async def nodes(request: Request) -> Response:
        return JSONResponse(await monitor.nodes())

    async def queues(request: Request) -> Response:
        return JSONResponse(await monitor.queues())

    async def tasks(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in {s.value for s in TaskStatus}:
            return _error(400, f"unknown status {status!r}; use one of {[s.value for s in TaskStatus]}")
        try:
            limit = min(max(int(request.query_params.get("limit", monitor.recent)), 1), 500)
        except ValueError:
            return _error(400, "limit must be a whole number")
        rows = await monitor.recent_tasks(limit, status=status, query=request.query_params.get("q") or None)
        return JSONResponse({"tasks": rows})

    async def task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        found = await monitor.task(task_id)
        if found is None:
            return _error(404, no_such_task(task_id))
        return JSONResponse(found)

    async def jobs(request: Request) -> Response:
        return JSONResponse({"jobs": await monitor.jobs()})

    async def trouble(request: Request) -> Response:
        return JSONResponse(await monitor.trouble())

    async def ota(request: Request) -> Response:
        return JSONResponse({"nodes": await monitor.ota()})

    async def metrics(request: Request) -> Response:
        return Response(await monitor.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            version = 0
            async with monitor.subscription():
                while not monitor.closed:
                    fresh, payload = await monitor.next_payload(version, KEEPALIVE_S)
                    if payload is None:
                        yield ": keep-alive\n\n"
                        continue
                    version = fresh
                    yield f"event: snapshot\nid: {version}\ndata: {payload}\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # --- actions -----------------------------------------------------------------------------------------

    @action
    async def retry(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        logger.info("monitor: retry of task %s asked from %s", task_id, who(request))
        if not await broker.retry_task(task_id):
            return _error(409, f"task {task_id!r} was not retried: unknown, or already completed")
        return JSONResponse({"task_id": task_id, "retried": True})

    @action
    async def cancel(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        logger.info("monitor: cancel of task %s asked from %s", task_id, who(request))
        if not await broker.cancel_task(task_id):
            return _error(409, f"task {task_id!r} was not cancelled: unknown, or already finished")
        return JSONResponse({"task_id": task_id, "cancelled": True})

    async def send(command: str, data: dict[str, Any], targets: list[str], wait: float) -> dict[str, Any]:
        online = await broker.get_nodes()
        expected = len([n for n in online if not targets or {n.node_id, n.node_name} & set(targets)])
        message_id = await broker.broadcast_control(command, data, targets)
        replies = await broker.collect_replies(message_id, expected=expected, timeout=wait) if wait > 0 else []
        return {"message_id": message_id, "command": command, "expected": expected,
                "replies": [wire.to_plain(r) for r in replies]}

    def node_command(command: str) -> Handler:
        @action
        async def handler(request: Request) -> Response:
            node_id = request.path_params["node_id"]
            if not any(node_id in (n.node_id, n.node_name) for n in await broker.get_nodes()):
                return _error(404, f"no online node {node_id!r}")
            logger.info("monitor: %s of node %s asked from %s", command, node_id, who(request))
            return JSONResponse({"node_id": node_id, **await send(command, {}, [node_id], 3.0)})

        return handler

    @action
    async def broadcast(request: Request) -> Response:
        body = await body_json(request)
        command = body.get("command")
        if not isinstance(command, str) or not command.strip() or len(command) > 100:
            return _error(400, "command must be a non-empty string (PING, PAUSE, RESUME, SHUTDOWN or a plugin's)")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            return _error(400, "data must be a JSON object")
        targets = body.get("nodes") or []
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            return _error(400, "nodes must be a list of node ids or names")
        wait = body.get("wait", 2.0)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
            return _error(400, f"wait must be 0-{MAX_WAIT:g} seconds")
        logger.info("monitor: broadcast %s to %s asked from %s", command.strip(), targets or "all", who(request))
        return JSONResponse(await send(command.strip(), data, targets, float(wait)))

    routes = [
        Route("/", index),
        Route("/api/snapshot", snapshot),
        Route("/api/stream", stream),
        Route("/api/nodes", nodes),
        Route("/api/nodes/{node_id:path}/pause", node_command("PAUSE"), methods=["POST"]),
        Route("/api/nodes/{node_id:path}/resume", node_command("RESUME"), methods=["POST"]),
        Route("/api/queues", queues),
        Route("/api/tasks", tasks),
        Route("/api/tasks/{task_id:path}/retry", retry, methods=["POST"]),
        Route("/api/tasks/{task_id:path}/cancel", cancel, methods=["POST"]),
        Route("/api/tasks/{task_id:path}", task),
        Route("/api/jobs", jobs),
        Route("/api/trouble", trouble),
        Route("/api/ota", ota),
        Route("/api/broadcast", broadcast, methods=["POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return _Guard(Starlette(routes=routes), allowed_hosts=allowed_hosts)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside someone else's event loop: the nexus owns the signals, so uvicorn takes none."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _listen(address: str, port: int) -> socket.socket:
    """A bound TCP socket (``OSError`` when the port is taken), so a busy port never exits the nexus."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


class MonitorServer:
    """Serves the Hive Monitor on ``HIVE_MONITOR_ADDRESS:HIVE_MONITOR_PORT`` in the running event loop."""

    def __init__(
        self,
        broker: MessageBroker,
        *,
        watchdog: Any = None,
        address: str | None = None,
        port: int | None = None,
        interval: float = 1.0,
    ) -> None:
        config = broker.config
        self.address = address or config.monitor_address
        self.port = port or config.monitor_port
        self.monitor = Monitor(broker, watchdog=watchdog, interval=interval)
        allowed = {"localhost", "127.0.0.1", "[::1]", self.address.lower()} if is_loopback(self.address) else None
        self.app = create_app(self.monitor, allowed_hosts=allowed)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"

    async def start(self) -> bool:
        """Listen and serve; ``False`` (with a warning) when the address cannot be used."""
        try:
            sock = _listen(self.address, self.port)
        except OSError as exc:
            logger.warning("Hive Monitor not served: cannot listen on %s (%s)", self.url, exc)
            return False
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False, log_level="warning",
            ws="none", timeout_graceful_shutdown=3, server_header=False,
        )
        self._server = server = _EmbeddedServer(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="hive-monitor-http")
        while not server.started and not self._task.done():  # noqa: ASYNC110 - uvicorn offers only a flag
            await asyncio.sleep(0.01)
        if self._task.done():
            error = self._task.exception() if not self._task.cancelled() else None
            logger.warning("Hive Monitor not served: the web server stopped at start (%s)", error)
            sock.close()
            return False
        self.monitor.start()
        actions = "need HIVE_MONITOR_TOKEN" if self.monitor.actions_enabled else "disabled (no HIVE_MONITOR_TOKEN)"
        logger.info("Hive Monitor on %s (metrics at %smetrics; actions %s)", self.url, self.url, actions)
        return True

    async def stop(self) -> None:
        """End every live stream, then the web server (forced after a few seconds)."""
        await self.monitor.stop()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 8)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._server = self._task = None
