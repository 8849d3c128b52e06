"""Sync handlers run in child processes (``@task(isolation="process")``), so a stuck one can be killed.

A thread cannot be stopped: a sync handler past its timeout keeps its thread (and its CPU) until it returns.
A handler declared ``isolation="process"`` runs instead in one of the spore's child processes, one call at a
time each; when its task is cancelled (its timeout passed, or the spore stops) the child is killed with
SIGKILL and a fresh one takes its place on the next call. The children come from a ``forkserver`` that has
imported the handlers' modules, so a replacement costs a fork, not an interpreter start.

Calls travel as JSON over a pipe (payload in, result or error out; never pickle). The handler takes only the
payload: a :class:`~hive_framework.tasks.TaskContext` holds a Redis client and the kernel, which do not cross
a process boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import signal
import traceback
from collections.abc import Iterable
from typing import Any

from .errors import HiveError

#: How the children are started: ``forkserver`` (fork from a clean server that preloaded the handlers'
#: modules) where the platform has it, else ``spawn``.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class HandlerProcessError(HiveError):
    """A handler run in a child process raised, or the child died; ``str`` names the original error."""


def handler_address(handler: Any) -> tuple[str, str]:
    """Where a child process finds ``handler``: its module and its module-level name; else ValueError."""
    module, qualname = getattr(handler, "__module__", None), getattr(handler, "__qualname__", "")
    if not module or not qualname or "<" in qualname or "." in qualname:
        raise ValueError("isolation='process' needs a handler defined at module level (a child process imports it)")
    return module, qualname


def _child(conn: multiprocessing.connection.Connection) -> None:
    """The child's loop: read a JSON call, run the handler, write a JSON reply; until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the spore's to handle; it stops the children
    while True:
        try:
            call = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            target = getattr(importlib.import_module(call["module"]), call["name"])
            handler = getattr(target, "handler", target)  # @task returns a TaskType wrapping the function
            reply = {"ok": True, "result": handler(call["payload"])}
            data = json.dumps(reply, allow_nan=False)
        except BaseException as exc:
            data = json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                               "trace": traceback.format_exc(limit=20)})
        conn.send_bytes(data.encode())


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, context: Any) -> None:
        self.conn, child_end = context.Pipe(duplex=True)
        self.process = context.Process(target=_child, args=(child_end,), daemon=True, name="hive-task-process")
        self.process.start()
        child_end.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class ProcessPool:
    """Up to ``size`` child processes, one call at a time each (see the module docstring)."""

    def __init__(self, size: int, *, preload: Iterable[str] = ()) -> None:
        self.size = size
        self._context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            self._context.set_forkserver_preload(sorted({"hive_framework.isolation", *preload}))
        self._idle: list[_Child] = []
        self._slots = asyncio.Semaphore(size)
        self._all: set[_Child] = set()
        #: Children killed because their call was cancelled (timeouts, stops): for logs and tests.
        self.killed = 0

    def pids(self) -> list[int]:
        """The live children's pids."""
        return [c.process.pid for c in self._all if c.process.pid is not None and c.process.is_alive()]

    async def call(self, handler: Any, payload: Any) -> Any:
        """Run ``handler(payload)`` in a child; its result, or :class:`HandlerProcessError` naming the failure."""
        module, name = handler_address(handler)
        request = json.dumps({"module": module, "name": name, "payload": payload}, allow_nan=False).encode()
        async with self._slots:
            child = self._idle.pop() if self._idle else await asyncio.to_thread(self._start)
            try:
                child.conn.send_bytes(request)
                raw = await self._reply(child)
            except BaseException:
                # cancelled (timeout, stop) or the child died: this child is never reused
                self._all.discard(child)
                if child.process.is_alive():
                    self.killed += 1
                await asyncio.to_thread(child.kill)
                raise
            self._idle.append(child)
        reply = json.loads(raw)
        if not reply["ok"]:
            raise HandlerProcessError(reply["error"])
        return reply["result"]

    def _start(self) -> _Child:
        child = _Child(self._context)
        self._all.add(child)
        return child

    async def _reply(self, child: _Child) -> bytes:
        """The child's reply, waited for without a thread (the pipe's readable event)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = child.conn.fileno()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            raw: bytes = child.conn.recv_bytes()
            return raw
        except (EOFError, OSError):
            child.process.join(timeout=5)
            raise HandlerProcessError(
                f"the process running the handler died (exit code {child.process.exitcode})"
            ) from None

    def close(self) -> None:
        """Kill every child (the spore is stopping; their tasks were handed back or failed)."""
        for child in list(self._all):
            child.kill()
        self._all.clear()
        self._idle.clear()
