"""The MCP server: the hive's tools and resources, built on the reference SDK's :class:`MCPServer`.

Every tool answers with structured content (JSON objects; ``map_reduce`` and ``parallel_execute`` answer
with the seed's ``ParallelSkill`` report). A refusal (bad arguments, a payload that breaks its task type's
schema, an unknown task) is a tool error whose text is the seed's ``{"error": ..., "error_type": ...}``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, NotRequired, cast

import anyio
from hive_framework import ConfigError, ForemanAgent, HiveError, Kernel, MessageBroker, TaskStatus, WaitTimeout
from hive_framework.jobs import MapJob, item_payload
from hive_framework.parallel import parse_items, summarize
from hive_framework.wire import to_plain
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import ToolAnnotations
from pydantic import Field
from typing_extensions import TypedDict  # pydantic describes typing.TypedDict only on Python 3.12+

from .audit import AuditMiddleware, Caller
from .payloads import check_payloads, schema_of
from .scan import KEPT_SCANS, SARIF_URI, Scans
from .settings import McpSettings, plugin_version

logger = logging.getLogger("hive_plugin_mcp")

CLUSTER_URI = "hive://cluster/status"
#: Opt-in tools that drive another plugin's task types: (tool, module, distribution).
OPTIONAL_TOOLS = (("scan", "hive_plugin_security_scan", "hive-plugin-security-scan"),
                  ("scrape", "hive_plugin_scrape", "hive-plugin-scrape"))
TASK_URI = "hive://tasks/{task_id}"

INSTRUCTIONS = """\
This server is a hive: a cluster of worker processes (spores) fed from Redis queues.
Use map_reduce to run one task type over many items in parallel and get one JSON report back
(results in input order, a summary, and the reduced value); list_task_types tells which task types exist,
what each does and, when declared, the JSON Schema its payload must match. cluster_status shows the
workers and their load. Long calls report progress and can be cancelled: cancelling stops their tasks."""


class Summary(TypedDict):
    total_tasks: int
    completed: int
    failed: int
    pending: int
    cancelled: int
    success_rate: float
    duration_s: float


class ItemResult(TypedDict):
    item_index: int
    item: Any
    task_id: str
    status: str
    result: Any
    error: str | None
    node: str | None


class MapReduceReport(TypedDict):
    """The seed's ParallelSkill report; ``error``/``error_type`` appear when the results could not be reduced."""

    summary: Summary
    task_type: str
    job_id: str
    results: list[ItemResult]
    reducer: str
    reduced: Any
    error: NotRequired[str]
    error_type: NotRequired[str]


class SubmitResult(TypedDict):
    task_id: str
    task_type: str
    status: str
    #: When a delayed task is due (ISO 8601, UTC); absent for one queued at once.
    eta: NotRequired[str]


class CancelResult(TypedDict):
    task_id: str
    cancelled: bool
    status: str


class WaitResult(TypedDict):
    finished: bool
    task: dict[str, Any]


class TaskTypesResult(TypedDict):
    task_types: list[dict[str, Any]]


def seed_error(exc: BaseException) -> str:
    """The seed's error JSON (as ``ParallelSkill`` writes it) for a refusal."""
    if isinstance(exc, HiveError):
        return json.dumps({"error": str(exc), "error_type": type(exc).__name__})
    return json.dumps({"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__})


Priority = Annotated[
    int | str,
    Field(description="high_priority, background, normal, low, or a level 0-10 (5 and up go to the high queue)."),
]


class HiveTools:
    """The hive's side of every tool: one broker, one Foreman view, shared by all calls of one server."""

    def __init__(self, kernel: Kernel, settings: McpSettings) -> None:
        self.kernel = kernel
        self.settings = settings
        self.broker = MessageBroker(kernel)
        self.foreman = ForemanAgent(self.broker)
        self.bus = InMemorySubscriptionBus()
        self._last_cluster: str | None = None

    # --- life cycle ------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HiveTools]:
        """Connected to Redis, with the cluster view kept fresh (and its resource's listeners told of changes)."""
        await self.broker.connect()
        watcher = asyncio.create_task(self._watch_cluster(), name="hive-mcp-cluster")
        try:
            yield self
        finally:
            watcher.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(watcher, return_exceptions=True)
                await self.broker.disconnect()

    async def _watch_cluster(self) -> None:
        """Refresh the Foreman's view each heartbeat; publish ``hive://cluster/status`` updates when it changes."""
        while True:
            try:
                status = await self.cluster_status()
                fingerprint = json.dumps(_stable(status), sort_keys=True, default=str)
                if self._last_cluster is not None and fingerprint != self._last_cluster:
                    await self.bus.publish(ResourceUpdated(uri=CLUSTER_URI))
                self._last_cluster = fingerprint
            except Exception as exc:
                logger.warning("cluster refresh failed: %s", exc)
            await asyncio.sleep(self.kernel.config.heartbeat_interval)

    # --- tools -----------------------------------------------------------------------------------------------

    def _bounded(self, seconds: float) -> float:
        if seconds <= 0:
            raise ToolError(seed_error(HiveError(f"a wait must be > 0 s, got {seconds}")))
        return min(seconds, self.settings.max_wait)

    async def map_reduce(
        self,
        task_description: str,
        items: list[Any],
        priority: int | str,
        wait_timeout: float,
        task_type: str | None,
        reducer: str | None,
        chunk_size: int,
        cancel_on_timeout: bool,
        ctx: Context | None,
        label: str = "items",
    ) -> MapReduceReport:
        """``ParallelSkill.map_reduce``'s report, with progress from the job's completion events."""
        wait = self._bounded(wait_timeout)
        try:
            parsed = parse_items(items, label)
            if len(parsed) > self.settings.max_items:
                raise HiveError(f"{len(parsed)} {label} is more than max_items ({self.settings.max_items})")
            chosen = task_type or self.kernel.claim(task_description, parsed)
            check_payloads(self.kernel, chosen, [item_payload(i, task_description) for i in parsed], label=label)
            job = MapJob(self.broker, chosen, parsed, description=task_description, chunk_size=chunk_size,
                         priority=priority)
            # Shielded: a cancellation arriving mid-enqueue waits for it, then lands below and cancels the tasks.
            with anyio.CancelScope(shield=True):
                await job.submit()
        except (HiveError, ValueError) as exc:
            raise ToolError(seed_error(exc)) from None
        total = len(parsed)
        failed = 0
        try:
            await _progress(ctx, 0, total, f"job {job.job_id}: {len(job.task_ids)} tasks queued for {chosen}")
            async for outcome in job.stream(wait):
                failed += not outcome.ok
                done = len(job.outcomes)
                await _progress(ctx, done, total, f"job {job.job_id}: {done}/{total} done, {failed} failed")
        except anyio.get_cancelled_exc_class():
            # The agent cancelled the call (notifications/cancelled): stop the job's tasks too.
            with anyio.CancelScope(shield=True):
                cancelled = await job.cancel_unfinished()
            logger.info("job %s: call cancelled, %d unfinished tasks cancelled", job.job_id, cancelled)
            raise
        if cancel_on_timeout:
            await job.cancel_unfinished()
        outcomes = job.ordered()
        name = reducer or getattr(self.kernel.task_types.get(chosen), "reducer", None) or "collect"
        reduce_error: dict[str, Any] = {}
        try:
            reduced = self.kernel.reduce(name, [o.result for o in outcomes if o.ok])
        except Exception as exc:  # the items ran: report them along with why they could not be reduced
            reduced, reduce_error = None, json.loads(seed_error(exc))
        report: MapReduceReport = json.loads(json.dumps(
            {
                "summary": summarize(outcomes, time.monotonic() - job.started),
                "task_type": chosen,
                "job_id": job.job_id,
                "results": [to_plain(o) for o in outcomes],
                "reducer": name,
                "reduced": reduced,
                **reduce_error,
            },
            default=str,
        ))
        return report

    async def submit(
        self, task_type: str, payload: dict[str, Any], priority: int | str | None, timeout: float | None,
        max_retries: int | None, delay: float | None = None, eta: str | None = None,
    ) -> SubmitResult:
        """Enqueue one task, checked as the core checks it (a bad or double delay/eta is refused by name)."""
        try:
            check_payloads(self.kernel, task_type, [payload])
            task_id = await self.broker.enqueue_task(task_type, payload, priority, timeout=timeout,
                                                     max_retries=max_retries, delay=delay, eta=eta)
            message = await self.broker.get_task_status(task_id)
        except (HiveError, ValueError) as exc:
            raise ToolError(seed_error(exc)) from None
        status = message.status.value if message is not None else TaskStatus.PENDING.value
        answer: SubmitResult = {"task_id": task_id, "task_type": task_type, "status": status}
        if message is not None and message.eta is not None and message.status == TaskStatus.SCHEDULED:
            answer["eta"] = message.eta.isoformat()
        return answer

    async def task(self, task_id: str) -> dict[str, Any]:
        message = await self.broker.get_task_status(task_id)
        if message is None:
            raise ToolError(json.dumps({"error": f"no task with id {task_id!r} (unknown, or expired)",
                                        "task_id": task_id}))
        plain: dict[str, Any] = json.loads(json.dumps(to_plain(message), default=str))
        return plain

    async def wait(self, task_id: str, timeout: float) -> WaitResult:
        """The task once final, or as it is when ``timeout`` (bounded by ``max_wait``) passes."""
        try:
            message = await self.broker.wait_for_task(task_id, self._bounded(timeout))
        except WaitTimeout:
            return {"finished": False, "task": await self.task(task_id)}
        except HiveError as exc:  # no such task
            raise ToolError(seed_error(exc)) from None
        return {"finished": message.is_terminal, "task": json.loads(json.dumps(to_plain(message), default=str))}

    async def cancel(self, task_id: str) -> CancelResult:
        cancelled = await self.broker.cancel_task(task_id)
        message = await self.broker.get_task_status(task_id)
        if message is None:
            raise ToolError(json.dumps({"error": f"no task with id {task_id!r}", "task_id": task_id}))
        return {"task_id": task_id, "cancelled": cancelled, "status": message.status.value}

    async def cluster_status(self) -> dict[str, Any]:
        """The Foreman's view (``ForemanAgent.get_cluster_status``) plus the queues, fresh from Redis."""
        await self.foreman.refresh()
        status = self.foreman.get_cluster_status()
        status["queues"] = await self.broker.get_queue_stats()
        plain: dict[str, Any] = json.loads(json.dumps(status, default=str))
        return plain

    async def queue_stats(self) -> dict[str, int]:
        return dict(await self.broker.get_queue_stats())

    async def list_task_types(self) -> TaskTypesResult:
        """Task types known here (with description and payload schema) and those only remote spores offer."""
        offered: dict[str, list[str]] = {}
        for node in await self.broker.get_nodes():
            for name in node.task_types:
                offered.setdefault(name, []).append(node.node_name)
        rows: list[dict[str, Any]] = []
        for name in sorted({*self.kernel.task_types, *offered}):
            declared = self.kernel.task_types.get(name)
            row: dict[str, Any] = {"name": name, "nodes": sorted(offered.get(name, []))}
            if declared is not None:
                row.update(
                    description=declared.description,
                    priority=declared.priority,
                    reducer=declared.reducer,
                    timeout=declared.timeout,
                    max_retries=declared.max_retries,
                    requirements=declared.requirements,
                    payload_schema=schema_of(self.kernel, name),
                )
            else:
                row.update(description="", payload_schema=None)
            rows.append(row)
        return {"task_types": rows}


async def _progress(ctx: Context | None, done: float, total: float, message: str) -> None:
    if ctx is not None:
        await ctx.report_progress(done, total, message)


def _stable(status: dict[str, Any]) -> dict[str, Any]:
    """The cluster status without what changes on every heartbeat (timestamps, load percentages)."""
    return {
        "nodes": sorted((n["node_id"], n["is_online"], n["active_tasks"], n["paused"]) for n in status["nodes"]),
        "queues": status.get("queues"),
    }


def build_server(kernel: Kernel, settings: McpSettings, caller: Callable[[Any], Caller]) -> MCPServer[HiveTools]:
    """An :class:`MCPServer` offering ``settings.tools`` over ``kernel``'s hive; ``caller`` names who calls."""
    hive = HiveTools(kernel, settings)

    @asynccontextmanager
    async def lifespan(_: MCPServer[HiveTools]) -> AsyncIterator[HiveTools]:
        async with hive.running():
            yield hive

    server: MCPServer[HiveTools] = MCPServer(
        "hive",
        title="hive-framework",
        description="Run map-reduce jobs and tasks on a hive cluster and watch its workers.",
        instructions=INSTRUCTIONS,
        version=plugin_version(),
        lifespan=lifespan,
        subscriptions=hive.bus,
        middleware=[AuditMiddleware(caller)],
        log_level="WARNING",
    )
    enabled = set(settings.tools)
    for name, module, distribution in OPTIONAL_TOOLS:
        if name in enabled and importlib.util.find_spec(module) is None:
            raise ConfigError(f"[plugins.mcp] enable names {name!r}, which needs {distribution} installed")
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    runs_work = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

    def tool(name: str, annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in enabled:
                server.add_tool(fn, name=name, annotations=annotations, structured_output=True)
            return fn

        return add

    @tool("map_reduce", runs_work)
    async def map_reduce(
        task_description: Annotated[str, Field(description="What the work is (free text; plugins may claim "
                                               "items by it).")],
        items: Annotated[list[Any], Field(min_length=1, description="The items: each becomes one task "
                                          "(a JSON object is the payload as it is, anything else {\"item\": ...}).")],
        ctx: Context,
        priority: Priority = "high_priority",
        wait_timeout: Annotated[float, Field(gt=0, description="Seconds to wait; unfinished items are reported as "
                                             "pending (bounded by the server's max_wait).")] = 300,
        task_type: Annotated[str | None, Field(description="Task type to run; default: the one a plugin claims "
                                               "for these items.")] = None,
        reducer: Annotated[str | None, Field(description="collect, concat, sum, count, merge or a plugin's; "
                                             "default: the task type's.")] = None,
        chunk_size: Annotated[int, Field(ge=1, description="Items per task (batches small items).")] = 1,
        cancel_on_timeout: Annotated[bool, Field(description="Cancel the tasks still unfinished at the "
                                                 "timeout.")] = False,
    ) -> MapReduceReport:
        """MAP items to tasks, DISTRIBUTE them over the spores, WAIT, REDUCE: the seed's ParallelSkill.map_reduce.

        Answers {"summary": {total_tasks, completed, failed, pending, cancelled, success_rate, duration_s},
        "task_type", "job_id", "results": [{item_index, item, task_id, status, result, error, node}] in input
        order, "reducer", "reduced"}. Reports progress as items finish; cancelling the call cancels its tasks.
        """
        return await hive.map_reduce(task_description, items, priority, wait_timeout, task_type, reducer,
                                     chunk_size, cancel_on_timeout, ctx)

    @tool("parallel_execute", runs_work)
    async def parallel_execute(
        task_description: Annotated[str, Field(description="What the work is.")],
        subtasks: Annotated[list[Any], Field(min_length=1, description="Independent subtasks, one task each.")],
        ctx: Context,
        priority: Priority = "high_priority",
        wait_timeout: Annotated[float, Field(gt=0, description="Seconds to wait (bounded by max_wait).")] = 600,
        task_type: Annotated[str | None, Field(description="Task type to run; default: a plugin's claim.")] = None,
        reducer: Annotated[str | None, Field(description="Reducer; default: the task type's, else collect.")] = None,
        cancel_on_timeout: Annotated[bool, Field(description="Cancel what is unfinished at the timeout.")] = False,
    ) -> MapReduceReport:
        """Run independent subtasks in parallel: the seed's ParallelSkill.parallel_execute (map_reduce's report)."""
        return await hive.map_reduce(task_description, subtasks, priority, wait_timeout, task_type, reducer, 1,
                                     cancel_on_timeout, ctx, label="subtasks")

    @tool("submit", runs_work)
    async def submit(
        task_type: Annotated[str, Field(description="A task type from list_task_types.")],
        payload: Annotated[dict[str, Any], Field(description="The task's payload; checked against the type's "
                                                 "payload_schema when it declares one.")] = {},  # noqa: B006
        priority: Annotated[int | str | None, Field(description="Priority; default: the task type's.")] = None,
        timeout: Annotated[float | None, Field(gt=0, description="Task timeout in seconds.")] = None,
        max_retries: Annotated[int | None, Field(ge=0, description="Retries after a failed attempt.")] = None,
        delay: Annotated[float | None, Field(ge=0, description="Run no sooner than this many seconds from now "
                                             "(stored at once as scheduled). Not with eta.")] = None,
        eta: Annotated[str | None, Field(description="Run no sooner than this moment: ISO 8601 with its time "
                                         "zone, such as 2030-01-31T09:00:00+01:00 (a past one runs at once). "
                                         "Not with delay.", json_schema_extra={"format": "date-time"})] = None,
    ) -> SubmitResult:
        """Enqueue one task and answer its id at once (follow it with task_status or wait); with delay or eta it
        waits as scheduled until due, and the answer says when (eta)."""
        return await hive.submit(task_type, payload, priority, timeout, max_retries, delay, eta)

    @tool("task_status", read_only)
    async def task_status(task_id: Annotated[str, Field(description="A task id.")]) -> dict[str, Any]:
        """One task: status, attempt, node, result or error, timestamps."""
        return await hive.task(task_id)

    @tool("wait", read_only)
    async def wait(
        task_id: Annotated[str, Field(description="A task id.")],
        timeout: Annotated[float, Field(gt=0, description="Seconds to wait at most (bounded by max_wait).")] = 30,
    ) -> WaitResult:
        """Wait until a task is final (completed, failed or cancelled) or the timeout passes; answers the task."""
        return await hive.wait(task_id, timeout)

    @tool("cancel", runs_work)
    async def cancel(task_id: Annotated[str, Field(description="A task id.")]) -> CancelResult:
        """Cancel a task that has not finished (a running one finishes its attempt but is not retried)."""
        return await hive.cancel(task_id)

    @tool("cluster_status", read_only)
    async def cluster_status() -> dict[str, Any]:
        """The Foreman's view of the cluster: nodes online and lost, their load and load score, and the queues."""
        return await hive.cluster_status()

    @tool("queue_stats", read_only)
    async def queue_stats() -> dict[str, int]:
        """Queue depths and task counts by status for the whole cluster."""
        return await hive.queue_stats()

    @tool("list_task_types", read_only)
    async def list_task_types() -> TaskTypesResult:
        """Task types: name, description, defaults, payload schema (when declared) and the nodes offering each."""
        return await hive.list_task_types()

    if "scan" in enabled:
        scans = Scans(hive.broker, settings)

        @tool("scan", runs_work)
        async def scan(
            path: Annotated[str, Field(description="What to scan, under the server's scan roots: an absolute path "
                                       "or file:// URL (a folder or a file), or the git URL of a repository "
                                       "already cloned there (nothing is fetched).")],
            ctx: Context,
            top: Annotated[int, Field(ge=0, le=500, description="How many findings to return, most severe "
                                      "first (all of them are in the SARIF resource).")] = 20,
            shards: Annotated[int | None, Field(ge=1, le=1000, description="Shards to split the tree into; "
                                                "default: a few per spore.")] = None,
            wait_timeout: Annotated[float, Field(gt=0, description="Seconds to wait for the shards (bounded by "
                                                 "max_wait); unfinished shards are reported as failures.")] = 600,
        ) -> dict[str, Any]:
            """Security audit of a folder on the spores (bandit, detect-secrets, dependency checks).

            Answers the summary, the top findings and sarif_uri, a resource with the whole SARIF 2.1.0 log.
            """
            try:
                return await scans.scan(path, top, shards, hive._bounded(wait_timeout), ctx)
            except HiveError as exc:
                raise ToolError(seed_error(exc)) from None

        @server.resource(SARIF_URI, name="scan_sarif", mime_type="application/sarif+json",
                         description="The SARIF 2.1.0 log of a scan made by the scan tool (recent scans only).")
        async def sarif_resource(scan_id: str) -> str:
            log = scans.sarif.get(scan_id)
            if log is None:
                raise ResourceError(f"no recent scan with id {scan_id!r} (only the last {KEPT_SCANS} are kept)")
            return json.dumps(log)

    @tool("scrape", runs_work)
    async def scrape(
        urls: Annotated[list[str], Field(min_length=1, description="http(s) URLs of articles to summarise.")],
        ctx: Context,
        sentences: Annotated[int, Field(ge=1, le=20, description="Sentences per summary.")] = 3,
        language: Annotated[str, Field(description="Stop words: auto, an ISO code (en, pl...) or a jusText "
                                       "list name.")] = "auto",
        wait_timeout: Annotated[float, Field(gt=0, description="Seconds to wait (bounded by max_wait); "
                                             "unfinished URLs are reported as pending.")] = 300,
    ) -> dict[str, Any]:
        """Fetch each article on the spores, extract its text and summarise it in its own sentences.

        Answers {"pages": {url: {"title", "summary": [sentences]} or {"error", "error_kind"}}, "summary", "job_id"}.
        """
        from hive_plugin_scrape.cli import full_digest
        from hive_plugin_scrape.urls import InvalidPayload, parse_url

        try:
            items = [{"url": parse_url(url), "sentences": sentences, "language": language} for url in urls]
        except InvalidPayload as exc:
            raise ToolError(seed_error(HiveError(str(exc)))) from None
        report = await hive.map_reduce(f"Summarise each page in {sentences} sentences", items, "high_priority",
                                       wait_timeout, "web_scraping", "scrape_digest", 1, False, ctx, label="urls")
        return {"pages": full_digest(cast(dict[str, Any], report)), "summary": report["summary"],
                "job_id": report["job_id"]}

    @server.resource(TASK_URI, name="task", mime_type="application/json",
                     description="A task as JSON: status, result or error.")
    async def task_resource(task_id: str) -> str:
        message = await hive.broker.get_task_status(task_id)
        if message is None:
            raise ResourceError(f"no task with id {task_id!r} (unknown, or expired)")
        return json.dumps(to_plain(message), default=str)

    @server.resource(CLUSTER_URI, name="cluster_status", mime_type="application/json",
                     description="The cluster status (as the cluster_status tool); listeners are told when "
                                 "nodes, their active tasks or the queues change.")
    async def cluster_resource() -> str:
        return json.dumps(await hive.cluster_status(), default=str)

    return server

