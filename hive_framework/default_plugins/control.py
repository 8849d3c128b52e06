"""Built-in broadcast commands: PING, PAUSE, RESUME and SHUTDOWN."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..models import BroadcastMessage


@hookimpl
def on_broadcast(message: BroadcastMessage, context: Any) -> str | None:
    command = message.command.upper()
    if command == "PING":
        return "pong"
    if command == "PAUSE":
        context.pause()
        return "paused"
    if command == "RESUME":
        context.resume()
        return "resumed"
    if command == "SHUTDOWN":
        context.request_stop()
        return "stopping"
    return None
