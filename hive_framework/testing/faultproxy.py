"""A small fault-injecting TCP proxy for tests: latency per direction, connection resets, stalls and cuts.

Put it between a process and Redis (or anything TCP) when the kernel offers no ``netem`` or iptables::

    proxy = FaultProxy(("10.77.1.2", 6379), delay_up=0.025, delay_down=0.025)
    host, port = proxy.start()               # in a thread of its own; the test drives it from anywhere
    ...                                       # point REDIS_URL at redis://host:port
    proxy.reset_all()                         # every open connection gets a TCP RST now
    proxy.stall(True); proxy.stall(False)     # hold every byte (both ways) until released
    proxy.cut(True)                           # refuse new connections and reset the open ones
    proxy.stop()

Delay keeps order and pipelining: each chunk is forwarded ``delay`` seconds after it arrived, so a 50 ms
round trip costs 50 ms whatever is in flight, as on a real long link (bandwidth is not limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs


@attrs.define
class ProxyStats:
    """What went through the proxy (read any time)."""

    connections: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    """Forwards ``listen`` to ``upstream``; faults are changed at any time from any thread."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        delay_up: float = 0.0,
        delay_down: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.listen = listen
        self.delay_up = delay_up
        self.delay_down = delay_down
        self.stats = ProxyStats()
        self._stalled = False
        self._cut = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._released: asyncio.Event | None = None
        self.address: tuple[str, int] = listen

    # --- life cycle -------------------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Serve in a daemon thread; returns the address to connect to."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="hive-faultproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self.address

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults (thread-safe) ---------------------------------------------------------------------------

    def set_delay(self, up: float, down: float) -> None:
        """Seconds each chunk waits on its way up (to the upstream) and down; applies to chunks read from now."""
        self.delay_up, self.delay_down = up, down

    def reset_all(self) -> int:
        """Reset every open connection (TCP RST both ways); returns how many there were."""
        return int(self._call(self._reset_all))

    def stall(self, on: bool) -> None:
        """Hold (``True``) or release every byte in both directions; connections stay open."""
        self._call(lambda: self._set_stall(on))

    def cut(self, on: bool) -> None:
        """Cut the link: reset open connections and refuse new ones, until ``cut(False)``."""
        self._cut = on
        if on:
            self.reset_all()

    def _call(self, func: Callable[[], Any]) -> Any:
        if self._loop is None:
            raise RuntimeError("the proxy is not running")

        async def call() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def _set_stall(self, on: bool) -> None:
        self._stalled = on
        assert self._released is not None
        if on:
            self._released.clear()
        else:
            self._released.set()

    def _reset_all(self) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            for writer in pair:
                _abort(writer)
        self._pairs.clear()
        self.stats.resets += len(pairs)
        return len(pairs)

    # --- forwarding -------------------------------------------------------------------------------------

    async def _open(self) -> None:
        self._released = asyncio.Event()
        self._released.set()
        self._server = await asyncio.start_server(self._serve, *self.listen)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    async def _close(self) -> None:
        self._reset_all()
        if self._server is not None:
            self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        self.stats.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            async with asyncio.TaskGroup() as group:  # one side failing stops the other
                group.create_task(self._pump(reader, up_writer, lambda: self.delay_up, "bytes_up"))
                group.create_task(self._pump(up_reader, writer, lambda: self.delay_down, "bytes_down"))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Callable[[], float], counter: str
    ) -> None:
        """Read chunks as they come and write each ``delay()`` after its arrival, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                assert self._released is not None
                await self._released.wait()
                writer.write(data)
                await writer.drain()
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + delay(), data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped connection looks to the other end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()
