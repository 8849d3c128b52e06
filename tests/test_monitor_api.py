"""Hive Monitor without a browser: its JSON API, the token on actions, /metrics against the queue stats, the
live event stream, and `hive nexus` serving it. Real Redis; spores in-process where one is needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hive_framework import HiveConfig, Kernel, MessageBroker, TaskStatus
from hive_framework.jobs import MapJob
from hive_framework.monitor import Monitor, MonitorServer, create_app
from hive_framework.nexus import Nexus
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC
from .monitor_helpers import free_port

pytestmark = pytest.mark.redis

TOKEN = "s3cret-monitor-token"


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    """A client that knows the test task types and the monitor token."""
    return Kernel(hive_config.evolve(monitor_token=TOKEN), apps=[BASIC])


@pytest.fixture
async def monitor(hive: Any) -> Monitor:
    return Monitor(hive.broker)


@pytest.fixture
async def client(monitor: Monitor) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(monitor))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def fail_for_good(hive: Any, task_type: str = "echo", **payload: Any) -> str:
    """A task recorded as failed for good (a dead letter), without a spore."""
    task_id: str = await hive.submit(task_type, payload, max_retries=0)
    await hive.broker.update_task_status(task_id, TaskStatus.RUNNING)
    await hive.broker.update_task_status(task_id, TaskStatus.FAILED, error="RuntimeError: planned")
    return task_id


async def test_metrics_parse_and_their_counts_match_the_queue_stats(hive, client):
    # Given queued high-priority and background tasks, one that ran and completed, and one that failed for good
    for _ in range(2):
        await hive.submit("add", {"a": 1, "b": 2})  # high_priority by its type
    for _ in range(3):
        await hive.submit("echo", {"n": 1})
    done = await hive.submit("echo", {"n": 2})
    await hive.broker.update_task_status(done, TaskStatus.RUNNING)
    await hive.broker.update_task_status(done, TaskStatus.COMPLETED, result={"ok": True})
    await fail_for_good(hive)

    # When Prometheus scrapes /metrics
    response = await client.get("/metrics")
    stats = await hive.queue_stats()

    # Then the exposition parses, and its gauges say what get_queue_stats says
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)

    def gauge(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert gauge("hive_queue_depth", queue="high_priority") == stats["high_priority_queue"] == 2
    assert gauge("hive_queue_depth", queue="background") == stats["background_queue"]
    assert gauge("hive_tasks", status="pending") + gauge("hive_tasks", status="retrying") == stats["tasks_pending"]
    for status in ("running", "completed", "failed", "retrying", "cancelled", "waiting"):
        assert gauge("hive_tasks", status=status) == stats[f"tasks_{status}"], status
    assert stats["tasks_completed"] == 1 and stats["tasks_failed"] == 1
    assert gauge("hive_dead_letters") == 1
    assert gauge("hive_quarantined_records") == 0
    assert gauge("hive_zombie_tasks") == 0
    # and the finished tasks were counted and timed once each
    assert gauge("hive_tasks_finished_total", status="completed") == 1
    assert gauge("hive_tasks_finished_total", status="failed") == 1
    assert gauge("hive_task_duration_seconds_count", task_type="echo", status="completed") == 1
    assert gauge("hive_task_duration_seconds_bucket", task_type="echo", status="completed", le="+Inf") == 1

    # When it scrapes again
    again = samples((await client.get("/metrics")).text)
    # Then nothing is counted twice
    assert again[("hive_tasks_finished_total", (("status", "completed"),))] == 1


async def test_metrics_report_each_node_cpu_memory_and_retries(hive, run_spore, client):
    # Given a spore that ran a task which needed one retry
    await run_spore(name="metrics-node", concurrency=2)
    task_id = await hive.submit("flaky", {"failures": 1})
    assert (await hive.wait(task_id, timeout=20)).status == TaskStatus.COMPLETED

    # When /metrics is read, once the spore has added its counts (about once a second)
    retried = ("hive_task_retries_total", (("task_type", "flaky"),))
    found: dict[Any, float] = {}

    async def counted() -> bool:
        found.update(samples((await client.get("/metrics")).text))
        return retried in found

    await async_wait_until(counted, timeout=10)

    # Then it has the node's CPU and memory, that it is up, and the retry
    assert ("hive_node_cpu_percent", (("node", "metrics-node"),)) in found
    assert 0 <= found[("hive_node_memory_percent", (("node", "metrics-node"),))] <= 100
    assert found[("hive_node_up", (("node", "metrics-node"), ("node_name", "metrics-node")))] == 1
    assert found[("hive_nodes", (("state", "online"),))] == 1
    assert found[("hive_task_retries_total", (("task_type", "flaky"),))] == 1


async def test_actions_are_refused_without_the_token_and_work_with_it(hive, client):
    # Given a dead letter
    task_id = await fail_for_good(hive)
    path = f"/api/tasks/{task_id}/retry"

    # When retry is asked without a token, or with a wrong one
    missing = await client.post(path)
    wrong = await client.post(path, headers={"Authorization": "Bearer nope"})

    # Then both are refused and the task is left as it was
    assert missing.status_code == 401 and "token" in missing.json()["error"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 403
    assert (await hive.status(task_id)).status == TaskStatus.FAILED

    # When it is asked with the token (as a bearer token, or in X-Hive-Token)
    allowed = await client.post(path, headers={"Authorization": f"Bearer {TOKEN}"})

    # Then the task is queued again and leaves the dead letters
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {"task_id": task_id, "retried": True}
    assert (await hive.status(task_id)).status == TaskStatus.PENDING
    assert (await client.get("/api/trouble")).json()["dead_letter_count"] == 0
    cancel = await client.post(f"/api/tasks/{task_id}/cancel", headers={"X-Hive-Token": TOKEN})
    assert cancel.status_code == 200 and (await hive.status(task_id)).status == TaskStatus.CANCELLED
    # and a retry of a task that cannot be retried says so
    assert (await client.post("/api/tasks/nope/retry", headers={"X-Hive-Token": TOKEN})).status_code == 409


async def test_actions_are_refused_when_no_token_is_configured(hive_config):
    # Given a monitor whose nexus has no HIVE_MONITOR_TOKEN
    async with MessageBroker(Kernel(hive_config, apps=[BASIC])) as broker:
        transport = httpx.ASGITransport(app=create_app(Monitor(broker)))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            # When any token is offered for an action
            response = await http.post("/api/broadcast", json={"command": "PING"},
                                       headers={"Authorization": "Bearer anything"})
            snapshot = (await http.get("/api/snapshot")).json()
    # Then actions are refused as disabled, and the page is told so
    assert response.status_code == 403 and "HIVE_MONITOR_TOKEN" in response.json()["error"]
    assert snapshot["actions_enabled"] is False


async def test_pause_resume_and_broadcast_reach_a_spore_with_the_token(hive, run_spore, client):
    # Given a running spore
    await run_spore(name="ctl-node", concurrency=1)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    # When it is paused without the token
    assert (await client.post("/api/nodes/ctl-node/pause")).status_code == 401
    # Then it keeps working
    assert not (await hive.nodes())[0].paused

    # When it is paused with the token
    paused = await client.post("/api/nodes/ctl-node/pause", headers=auth)
    # Then it replies, and its heartbeat says so
    assert paused.status_code == 200, paused.text
    assert [r["detail"] for r in paused.json()["replies"]] == ["paused"]

    async def is_paused() -> bool:
        return (await hive.nodes())[0].paused

    await async_wait_until(is_paused, timeout=5, what="the heartbeat to say paused")
    resumed = await client.post("/api/nodes/ctl-node/resume", headers=auth)
    assert [r["detail"] for r in resumed.json()["replies"]] == ["resumed"]
    # and an unknown node is a 404, a broadcast gathers the replies, bad input is a 400
    assert (await client.post("/api/nodes/ghost/pause", headers=auth)).status_code == 404
    ping = await client.post("/api/broadcast", json={"command": "PING", "wait": 5}, headers=auth)
    assert ping.status_code == 200 and [r["detail"] for r in ping.json()["replies"]] == ["pong"]
    bad = await client.post("/api/broadcast", content=b"{not json", headers=auth)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    assert (await client.post("/api/broadcast", json={"command": ""}, headers=auth)).status_code == 400


async def test_tasks_can_be_found_by_id_and_listed_newest_first(hive, client):
    # Given three tasks, one of them with a recognisable id
    first = await hive.submit("echo", {"n": 1})
    marked = await hive.submit("echo", {"n": 2}, task_id="find-me-0042")
    last = await hive.submit("echo", {"n": 3})

    # When the page asks for recent tasks, a search, and one task in full
    recent = (await client.get("/api/tasks")).json()["tasks"]
    search = (await client.get("/api/tasks", params={"q": "me-00"})).json()["tasks"]
    one = await client.get("/api/tasks/find-me-0042")
    unknown = await client.get("/api/tasks/no-such-task")

    # Then the list is newest first with status, attempt and node; the search finds the id; the task is whole
    assert [t["task_id"] for t in recent] == [last, marked, first]
    assert {t["status"] for t in recent} == {"pending"} and recent[0]["attempt"] == 0
    assert [t["task_id"] for t in search] == [marked]
    assert one.status_code == 200 and one.json()["payload"] == {"n": 2}
    assert unknown.status_code == 404
    assert (await client.get("/api/tasks", params={"status": "bogus"})).status_code == 400


async def test_map_reduce_jobs_show_their_progress(hive, client):
    # Given a map job of four items, two of which finished (one failed)
    job = MapJob(hive.broker, "echo", [1, 2, 3, 4], description="four numbers")
    ids = await job.submit()
    await hive.broker.update_task_status(ids[0], TaskStatus.COMPLETED, result=1)
    await hive.broker.update_task_status(ids[1], TaskStatus.FAILED, error="boom")

    # When the page asks for jobs
    jobs = (await client.get("/api/jobs")).json()["jobs"]

    # Then the job is listed with its progress
    assert len(jobs) == 1
    row = jobs[0]
    assert (row["job_id"], row["task_type"], row["description"]) == (job.job_id, "echo", "four numbers")
    assert (row["tasks"], row["done"], row["completed"], row["failed"], row["finished"]) == (4, 2, 1, 1, False)
    assert row["progress"] == 0.5

    # When the rest finish
    for task_id in ids[2:]:
        await hive.broker.update_task_status(task_id, TaskStatus.COMPLETED, result=0)
    row = (await client.get("/api/jobs")).json()["jobs"][0]
    # Then it is done (read on from where the monitor was in the job's stream)
    assert (row["done"], row["completed"], row["finished"], row["progress"]) == (4, 3, True, 1.0)


async def test_ota_state_is_shown_only_when_an_ota_plugin_wrote_it(hive, client):
    # Given no OTA state, the page gets none
    assert (await client.get("/api/ota")).json() == {"nodes": {}}
    # When an OTA plugin records rollout states (JSON or plain text)
    await hive.broker.redis.hset(hive.broker.keys.ota_rollout, mapping={
        "node-a": json.dumps({"state": "installed", "version": "1.2.0"}),
        "node-b": "downloading",
    })
    # Then each node's state is served
    assert (await client.get("/api/ota")).json() == {"nodes": {
        "node-a": {"state": "installed", "version": "1.2.0"},
        "node-b": {"state": "downloading"},
    }}


async def test_the_snapshot_has_every_part_of_the_page(hive, run_spore, client):
    # Given a spore and a few tasks, one a zombie (running on a node that never beats)
    await run_spore(name="snap-node")
    task_id = await hive.submit("echo", {})
    await hive.wait(task_id, timeout=10)
    zombie = await hive.submit("echo", {}, node="lost-node")
    await hive.broker.update_task_status(zombie, TaskStatus.RUNNING)
    message = await hive.status(zombie)
    message.assigned_node = "lost-node"
    await hive.broker.save_task(message)

    # When the page loads its first snapshot
    snap = (await client.get("/api/snapshot")).json()

    # Then it has nodes, queues with a throughput series, tasks, jobs, trouble and the action switch
    assert [n["node_name"] for n in snap["cluster"]["nodes"]] == ["snap-node"]
    node = snap["cluster"]["nodes"][0]
    for key in ("cpu_usage", "memory_usage", "active_tasks", "load_score", "capabilities", "version",
                "last_heartbeat", "concurrency", "queued"):
        assert key in node, key
    throughput = snap["queues"]["throughput"]
    assert len(throughput["completed"]) == len(throughput["failed"]) == 60
    assert sum(throughput["completed"]) == 1
    assert {t["task_id"] for t in snap["tasks"]} == {task_id, zombie}
    assert [z["task_id"] for z in snap["trouble"]["zombies"]] == [zombie]
    assert "lost-node stopped beating" in snap["trouble"]["zombies"][0]["why"]
    assert snap["jobs"] == [] and snap["ota"] == {} and snap["actions_enabled"] is True


async def read_snapshots(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


async def test_the_event_stream_pushes_fresh_snapshots_until_the_server_stops(hive):
    # Given the monitor served on a free port
    server = MonitorServer(hive.broker, port=free_port(), interval=0.1)
    assert await server.start()
    try:
        # When a page opens the event stream and a task is submitted
        async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", server.url + "api/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            snapshots = read_snapshots(response)
            first = await anext(snapshots)
            assert first["tasks"] == []
            task_id = await hive.submit("echo", {"n": 1})

            # Then a later snapshot shows it, without asking again
            async def shows_task() -> dict[str, Any]:
                async for snap in snapshots:
                    if any(t["task_id"] == task_id for t in snap["tasks"]):
                        return snap
                raise AssertionError("the stream ended")

            snap = await asyncio.wait_for(shows_task(), 10)
            assert snap["queues"]["stats"]["tasks_pending"] == 1

            # When the server stops, the open stream ends instead of holding the shutdown
            stopping = asyncio.create_task(server.stop())
            with contextlib.suppress(httpx.HTTPError):
                async for _ in snapshots:
                    pass
            await asyncio.wait_for(stopping, 10)
    finally:
        await server.stop()


async def test_the_server_refuses_foreign_host_names_and_a_busy_port(hive):
    # Given the monitor on loopback
    server = MonitorServer(hive.broker, port=free_port())
    assert await server.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            # When a request names another host (DNS rebinding), it is refused; loopback names work
            assert (await http.get(server.url + "api/nodes", headers={"Host": "evil.example"})).status_code == 400
            page = await http.get(server.url)
            assert page.status_code == 200 and "Hive Monitor" in page.text
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert (await http.get(server.url + "static/app.js")).status_code == 200
        # When a second monitor wants the same port, it says so and does not start
        assert not await MonitorServer(hive.broker, port=server.port).start()
    finally:
        await server.stop()


async def test_hive_nexus_serves_the_monitor(hive_config):
    # Given a nexus configured to serve the monitor on a free port
    port = free_port()
    kernel = Kernel(hive_config.evolve(monitor=True, monitor_port=port, monitor_token=TOKEN), apps=[BASIC])
    nexus = Nexus(kernel)
    running = asyncio.create_task(nexus.run(install_signals=False))
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def answers() -> httpx.Response | None:
                with contextlib.suppress(httpx.HTTPError):
                    return await http.get(f"http://127.0.0.1:{port}/api/snapshot")
                return None

            # When the page's first request arrives
            response = await async_wait_until(answers, timeout=15, what="the nexus's monitor to answer")
            # Then it is answered, with the nexus's own state in it
            assert response.status_code == 200
            assert response.json()["nexus"]["identity"] == nexus.watchdog.identity
    finally:
        nexus.request_stop()
        await asyncio.wait_for(running, 15)
    assert nexus.monitor is not None


def test_without_the_monitor_setting_a_nexus_serves_nothing(hive_config):
    assert Nexus(Kernel(hive_config)).serve_monitor is False  # fast_config: tests opt in
    assert Nexus(Kernel(hive_config), monitor=True).serve_monitor is True

