"""The streams engine's worker: batched strict-priority claims, blocking reads, leases, retries, takeovers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from redis.exceptions import RedisError, ResponseError

from ...broker.engine import Attempt, Delivery, Prefetched, TaskRunner, Worker
from ...broker.poison import digest, quarantine
from ...redisutil import fields, raise_if_cancelling, read_or_empty, text
from . import scripts

if TYPE_CHECKING:
    from .engine import StreamsEngine

logger = logging.getLogger(__name__)

#: The one consumer group every spore of a hive reads through.
GROUP = "hive"
#: How often a spore looks for consumers of stopped spores to remove from the groups, in seconds.
CONSUMER_PRUNE_EVERY_S = 60.0
#: Longest a due delayed task (or retry) waits in the delayed set before a spore moves it, in seconds.
DELAYED_CHECK_S = 0.5
#: Event-loop steps a spore gives the attempts it just started before it claims again (see :meth:`main`).
SETTLE_STEPS = 8
#: Longest a spore waits in a blocking read while a type it serves is at its cap, so a freed place is used soon.
CAPPED_POLL_S = 0.1
#: Tasks that run shorter than this (a moving average, in seconds) are claimed a batch ahead (see ``_quick``).
AHEAD_BELOW_S = 0.1


class StreamWorker(Worker):
    """Feeds one spore from its streams (its node stream first, then every level's, highest first)."""

    def __init__(self, engine: StreamsEngine, runner: TaskRunner) -> None:
        self.engine = engine
        self.runner = runner
        self.redis = engine.redis
        self.config = engine.config
        self.capacity = runner.concurrency
        self.queues = engine.consume_streams(runner.node_id, runner.task_types)
        types = sorted(runner.task_types)
        self._levels = [[engine.type_stream(level, t) for t in types] for level in range(10, -1, -1)]
        self._turn = 0
        self.limits = runner.limits
        #: The task type of each shared stream, for the limited types only (their levels share one limit).
        self._limited = {stream: t for t in types if t in self.limits.limits for stream in engine.queues([t])}
        self.consumer = f"{runner.node_id}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._allow = True
        self._reader: asyncio.Task[Any] | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: Tasks whose handler is done and whose outcome is being saved: they hold no slot.
        self._saving: set[str] = set()
        self._held: dict[str, tuple[str, Any]] = {}
        #: Entries claimed ahead, held (their leases renewed) until slots free up; highest priority first.
        self._ahead: list[Delivery] = []
        #: Moving average of how long this spore's handlers run, in seconds (``None``: none ran yet).
        self._run_s: float | None = None
        self._began: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._retry_scheduled = asyncio.Event()
        self.lease_ms = int(self.config.lease_seconds * 1000)
        #: Attempts begun beyond the slots while tasks are quick (``HIVE_PREFETCH``); the runner's gate keeps the
        #: handlers running at once to ``capacity``.
        self.prefetch = self.config.prefetch

    # --- the Worker interface ------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self.tasks)

    def in_flight(self) -> list[asyncio.Task[Any]]:
        return list(self.tasks.values())

    def pause(self) -> None:
        """Also abandons a blocking read, so no new entry is delivered to a paused spore."""
        self._allow = False
        if self._reader is not None:
            self._reader.cancel()
        self._wake.set()

    def resume(self) -> None:
        self._allow = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def main(self) -> None:
        await self._ensure_groups()
        upkeep = asyncio.create_task(self._upkeep(), name="hive-streams-upkeep")
        # Whether the claim made beside the last begin found nothing (see _start): it was the claim before the
        # next blocking read.
        found_none = False
        try:
            while True:
                raise_if_cancelling()
                free = self._free()
                if self._ahead and self._allow and free <= 0:
                    await self._wait_for_wake(1.0)
                    continue
                if self._ahead:
                    # Taken ahead by the claim beside a begin; paused, they all go back.
                    cut = free if self._allow else len(self._ahead)
                    entries, self._ahead = self._ahead[:cut], self._ahead[cut:]
                else:
                    if not self._allow or free <= 0:
                        found_none = False
                        await self._wait_for_wake(1.0)
                        continue
                    # Always claim before a blocking read: the claim takes the highest level first across every
                    # stream, while a blocking read returns one entry from each stream that has one, so reading
                    # blocking over a backlog would start lower levels beside higher ones.
                    entries = [] if found_none else await self._claim(free)
                    found_none = False
                if not entries and not self._allow:
                    continue  # paused while the claim ran: no blocking read, which pause() could not cancel
                if not entries:
                    self._reader = asyncio.create_task(self._block())
                    try:
                        entries = await self._reader
                    except asyncio.CancelledError:
                        current = asyncio.current_task()
                        if not self._reader.cancelled() or (current is not None and current.cancelling()):
                            raise
                        continue  # paused while waiting
                    finally:
                        self._reader = None
                if entries and not self._allow:
                    await self._hand_back(entries)
                elif entries:
                    room = self._free() - len(entries) - len(self._ahead)
                    if self._quick():
                        room += self.capacity + self.prefetch
                    ahead = await self._start(entries, claim=room)
                    found_none = ahead == [] and not self._ahead
                    self._ahead += ahead or []
                    # Let the attempts just started run a few steps: tiny ones finish (their slot is free
                    # again) before the next claim counts the free slots, rather than a claim of one slot
                    # keeping the others waiting a round trip.
                    for _ in range(SETTLE_STEPS):
                        if (self._free() - self._prefetching()) * 4 >= self.capacity:
                            break
                        await asyncio.sleep(0)
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            if self._ahead:
                # Entries taken ahead and never begun go back for other spores rather than wait out a lease.
                ahead, self._ahead = self._ahead, []
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self._hand_back(ahead)

    async def _wait_for_wake(self, timeout: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _quick(self) -> bool:
        """Whether this spore's tasks run shorter than :data:`AHEAD_BELOW_S` lately (from their begin, so counting
        a wait for a slot): then the claim beside a begin also takes the slots that batch will free (at most
        ``capacity + prefetch`` entries held ahead), so a spore far from Redis begins its next batch without
        waiting a round trip for it, and the prefetch applies."""
        return self._run_s is not None and self._run_s < AHEAD_BELOW_S

    def _free(self) -> int:
        """Attempts this spore may begin now: one per slot, plus the prefetch while its tasks are quick. Tasks
        whose outcome is only being saved take no place (at most as many as there are places), so a Redis that
        stops answering stops the claims too."""
        room = self.capacity + self._prefetching()
        return room - len(self.tasks) + min(len(self._saving), room)

    def _prefetching(self) -> int:
        """How many attempts this spore begins beyond its slots now: the prefetch, while its tasks are quick."""
        return self.prefetch if self.prefetch and self._quick() else 0

    async def refresh_leases(self) -> None:
        """Reset the idle time of every entry this spore holds, so no other spore takes it over."""
        if not self._held:
            return
        by_stream: dict[str, list[Any]] = {}
        for stream, entry_id in self._held.values():
            by_stream.setdefault(stream, []).append(entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xclaim(stream, GROUP, self.consumer, 0, ids, justid=True)
            await pipe.execute()

    async def close(self) -> None:
        """Leave the consumer groups (so they do not collect one dead consumer per restart), where nothing
        is pending for this spore; anything still pending stays for another spore to take over."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.queues:
                pipe.xpending_range(stream, GROUP, "-", "+", 1, consumername=self.consumer)
            pending = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, held in zip(self.queues, pending, strict=True):
                if not held:
                    pipe.xgroup_delconsumer(stream, GROUP, self.consumer)
            await pipe.execute()

    # --- taking entries ------------------------------------------------------------------------------

    async def _ensure_groups(self) -> None:
        """Create the group on every stream this spore reads (one round trip: a spore serving many types
        reads many streams)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.queues:
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                raise reply

    def _claim_order(self) -> list[str]:
        """The node stream, then each level's streams highest first; within a level the types take turns
        being read first, so one busy type does not starve the others of the same level."""
        if not self._levels or not self._levels[0]:
            return self.queues
        self._turn = (self._turn + 1) % len(self._levels[0])
        turn = self._turn
        return [self.queues[0], *(s for level in self._levels for s in (*level[turn:], *level[:turn]))]

    async def _claim(self, count: int) -> list[Delivery]:
        order = self._claim_order()
        records = self.engine.keys.task("")
        if not self._limited:
            raw = await scripts.CLAIM(self.redis, order, [GROUP, self.consumer, str(count), records])
            return [_delivery(text(stream), entry_id, entry, record) for stream, entry_id, entry, record in raw or []]
        # Limited types: leave out those at their cap or with a dry bucket, take tokens for the rated ones, let
        # the script give each type at most its room, then give back the tokens of tasks not there to take.
        limits = self.limits
        served = sorted(set(self._limited.values()))
        blocked = limits.blocked(served)
        granted = await limits.grant([t for t in served if t not in blocked], count)
        room: dict[str, int] = {}
        for name in served:
            if name in blocked:
                room[name] = 0
            else:
                cap = limits.room(name)
                room[name] = min(count if cap is None else cap, granted.get(name, count))
        groups = {name: i for i, name in enumerate(served, 1)}
        args = [GROUP, self.consumer, str(count), records,
                *(str(groups[self._limited[s]]) if s in self._limited else "0" for s in order),
                *(str(room[name]) for name in served)]
        raw = await scripts.CLAIM(self.redis, order, args)
        found = [_delivery(text(stream), entry_id, entry, record) for stream, entry_id, entry, record in raw or []]
        unused = dict(granted)
        for delivery in found:
            kind = self._limited.get(delivery.receipt[0])
            if kind in unused:
                unused[kind] -= 1
        await limits.give_back(unused)
        return found

    async def _block(self) -> list[Delivery]:
        """Wait up to a second for new entries on any stream (one per stream at most), highest priority first.

        Streams of limited types blocked now are not read, and the wait is cut short when one may be again (a
        token comes, or soon after one of its running tasks ends); an entry of a rated type read here is charged
        to its bucket afterwards (a bucket may overdraw by one task per spore, paid back by later takers)."""
        streams = self.queues
        timeout = 1.0
        if self._limited:
            blocked = self.limits.blocked(set(self._limited.values()))
            streams = [s for s in self.queues if self._limited.get(s) not in blocked]
            if any(self.limits.room(t) == 0 for t in blocked):
                timeout = CAPPED_POLL_S
            token_in = self.limits.next_token_in()
            if token_in is not None:
                timeout = min(timeout, max(token_in, 0.005))
        if not streams:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            return []
        reply = await self.redis.xreadgroup(GROUP, self.consumer, {s: ">" for s in streams}, count=1,
                                            block=max(int(timeout * 1000), 1))
        order = {s: i for i, s in enumerate(self.queues)}
        found = [
            _delivery(text(stream), entry_id, entry) for stream, items in (reply or []) for entry_id, entry in items
        ]
        found.sort(key=lambda d: order.get(d.receipt[0], len(order)))
        if self._limited and found:
            taken: dict[str, int] = {}
            for delivery in found:
                name = self._limited.get(delivery.receipt[0])
                if name is not None:
                    taken[name] = taken.get(name, 0) + 1
            try:
                await self.limits.charge(taken)
            except (RedisError, OSError) as exc:
                # The entries are this spore's now: run them rather than leave them to a lease take-over. The
                # bucket misses this charge, so the type may run ahead of its rate by these few tasks.
                logger.warning("could not charge %s to their rate buckets (%s); running them anyway", taken, exc)
        return found

    async def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return entries read just as the spore paused (or held ahead as it stopped) to their streams, for other
        spores."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for delivery in deliveries:
                stream, entry_id = delivery.receipt
                self._held.pop(_handle(stream, entry_id), None)
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                scripts.ADD.queue_whole(pipe, [stream, self.engine.entries], [delivery.task_id, delivery.job_id])
            await pipe.execute()

    async def _start(self, deliveries: Sequence[Delivery], claim: int = 0) -> list[Delivery] | None:
        """Begin every taken entry through the runner (one round trip), then run each in its own task. An entry
        that names no task and job (not written by the hive) is quarantined and acknowledged.

        With ``claim`` slots left over, the next claim for them goes beside the begin, in the same round trip;
        returns what it took, or ``None`` when it made none. A spore far from Redis would otherwise spend a round
        trip on that claim after each batch, during which a new entry waits for its blocking read."""
        # Entries held ahead are held on as running attempts from here, or not at all (skipped, refused, or this
        # begin failed: then their lease lapses and a spore takes them over).
        for delivery in deliveries:
            self._held.pop(_handle(*delivery.receipt), None)
        malformed = [d for d in deliveries if not (d.task_id and d.job_id)]
        for delivery in malformed:
            stream, entry_id = delivery.receipt
            await quarantine(
                self.redis, self.engine.keys, f"{stream} {text(entry_id)}",
                f"t={delivery.task_id!r} j={delivery.job_id!r}",
                "a stream entry without its task id (t) and job id (j) fields",
                [("XACK", stream, GROUP, entry_id), ("XDEL", stream, entry_id)],
            )
        deliveries = [d for d in deliveries if d.task_id and d.job_id]
        ahead: list[Delivery] | None = None
        if claim > 0 and deliveries:
            # The claim counts this batch's limited tasks (and those held ahead) as started already, so it leaves
            # their room to them.
            held = (*deliveries, *self._ahead)
            limited = [self._limited[d.receipt[0]] for d in held if d.receipt[0] in self._limited]
            for name in limited:
                self.limits.started(name)
            try:
                ahead, attempts = await asyncio.gather(self._claim(claim), self.runner.begin(deliveries))
            finally:
                for name in limited:
                    self.limits.finished(name)
        else:
            attempts = await self.runner.begin(deliveries) if deliveries else []
        now = time.monotonic()
        for attempt in attempts:
            stream, entry_id = attempt.delivery.receipt
            handle = _handle(stream, entry_id)
            self._held[handle] = (stream, entry_id)
            self._began[handle] = now
            self.limits.started(attempt.message.task_type)
            attempt.on_ran = functools.partial(self._ran, handle)
            self.tasks[handle] = asyncio.create_task(self._run(handle, attempt))
        for delivery in ahead or []:
            self._held[_handle(*delivery.receipt)] = delivery.receipt
        return ahead

    def _ran(self, handle: str) -> None:
        """The handler of ``handle`` is done, its outcome being saved: its slot may take the next task (at most
        as many saves in flight as slots, so a Redis that stops answering stops the claims too)."""
        self._saving.add(handle)
        began = self._began.pop(handle, None)
        if began is not None:
            took = time.monotonic() - began
            self._run_s = took if self._run_s is None else 0.8 * self._run_s + 0.2 * took
        self._wake.set()

    async def _run(self, handle: str, attempt: Attempt) -> None:
        try:
            if await self.runner.run(attempt) is not None:
                self._retry_scheduled.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("task %s: its outcome could not be recorded; its entry stays pending",
                             attempt.message.task_id)
        finally:
            self.limits.finished(attempt.message.task_type)
            self.tasks.pop(handle, None)
            self._held.pop(handle, None)
            self._began.pop(handle, None)
            self._saving.discard(handle)
            self._wake.set()

    # --- upkeep --------------------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        """Move due retries and delayed tasks onto their streams and take over entries whose spore stopped
        renewing them."""
        last_claim = 0.0
        last_prune = time.monotonic()
        keys = self.engine.keys
        next_due: Any = None
        while True:
            raise_if_cancelling()
            try:
                next_due, bad = await scripts.DUE_RETRIES(
                    self.redis, [self.engine.delayed, self.engine.entries],
                    [str(int(time.time() * 1000)), "500", keys.node_queue(""), keys.high_queue, keys.background_queue],
                )
                for member in bad or []:
                    await quarantine(self.redis, self.engine.keys, f"{self.engine.delayed} {digest(member)}", member,
                                     "a delayed retry that names no stream of this hive, task and job")
                now = time.monotonic()
                if now - last_claim >= self.config.lease_seconds / 2:
                    last_claim = now
                    await self._take_over()
                if now - last_prune >= CONSUMER_PRUNE_EVERY_S:
                    last_prune = now
                    await self.prune_consumers()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("stream upkeep failed: %s", exc)
                next_due = None
            # A client may schedule a task due before the next one known here: look again at least this often.
            wait = min(self.config.lease_seconds / 2, DELAYED_CHECK_S)
            if next_due:
                wait = min(wait, max(float(next_due) / 1000 - time.time(), 0.0))
            self._retry_scheduled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._retry_scheduled.wait()

    async def prune_consumers(self, idle_s: float | None = None) -> int:
        """Delete the group's consumers that hold nothing and have been idle for ``idle_s`` (default: four
        leases, at least a minute): a spore killed with nothing pending leaves its consumer behind, and one
        killed with entries pending has them taken over (then it holds nothing). A live but idle or paused
        spore losing its consumer is harmless: its next read creates it again. Returns how many went."""
        idle_ms = 1000 * (max(self.config.lease_seconds * 4, 60.0) if idle_s is None else idle_s)
        removed = 0
        # Every type's streams, not only this spore's: a type no live spore serves still had readers once.
        types_key = self.engine.types
        queued = {text(t) for t in await read_or_empty(self.redis.smembers(types_key), set(), types_key)}
        types = sorted(queued | set(self.runner.task_types))
        streams = self.engine.queues(types)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_consumers(stream, GROUP)
            replies = await pipe.execute(raise_on_error=False)
        for stream, consumers in zip(streams, replies, strict=True):
            if not isinstance(consumers, list):
                continue  # no stream or no group yet
            for consumer in consumers:
                name = consumer.get("name")
                if text(name) == self.consumer or consumer.get("pending", 1) or consumer.get("idle", 0) < idle_ms:
                    continue
                removed += int(await scripts.FORGET_CONSUMER(self.redis, [stream], [GROUP, name]))
        if removed:
            logger.info("removed %d idle consumer(s) of stopped spores from the stream groups", removed)
        return removed

    async def _take_over(self) -> None:
        if not self._allow:
            return
        # One read-only round trip finds the streams holding an entry idle past the lease; only those are
        # claimed from (a spore serving many types reads many streams, most with nothing to take over).
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.queues:
                pipe.xpending_range(stream, GROUP, "-", "+", 1, idle=self.lease_ms)
            idle = await pipe.execute(raise_on_error=False)
        stale = [s for s, found in zip(self.queues, idle, strict=True) if isinstance(found, list) and found]
        for stream in stale:
            free = self.capacity - len(self.tasks)
            if free <= 0:
                return
            reply = await self.redis.xautoclaim(stream, GROUP, self.consumer, self.lease_ms, "0-0", count=free)
            taken = [_delivery(stream, entry_id, entry) for entry_id, entry in (reply[1] or []) if entry]
            if taken:
                logger.info("taking over %d task(s) of a lost spore from %s", len(taken), stream)
                await self._start(taken)


def _handle(stream: str, entry_id: Any) -> str:
    """The key of a held entry in :attr:`StreamWorker.tasks` and the leases renewed."""
    return f"{stream}\x1f{text(entry_id)}"


#: What the claim script's reply has for an entry whose task record it read (``False`` from Lua: none).
_NOT_READ = object()


def _delivery(stream: str, entry_id: Any, raw: Any, record: Any = _NOT_READ) -> Delivery:
    """A delivery of a stream entry; with the task's ``record`` when the claim read it (``None``: it has none),
    else with the copy of it the entry carries, if any (``add.lua``)."""
    entry = fields(raw)
    delivery = Delivery(task_id=entry.get("t", ""), job_id=entry.get("j", ""), receipt=(stream, entry_id))
    if record is _NOT_READ:
        copy = entry.get("r")
        return delivery if copy is None else attrs.evolve(delivery, record=Prefetched(copy, copy=True))
    return attrs.evolve(delivery, record=Prefetched(record if isinstance(record, bytes | str) else None))
