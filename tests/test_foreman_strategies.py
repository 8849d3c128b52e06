"""Balancer strategies: chosen by HIVE_BALANCER, never picking an offline, paused or unfit node (Hypothesis),
and the seed's ForemanAgent answering from a cluster snapshot read out of Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hive_framework import ForemanAgent, HiveConfig, Kernel, MessageBroker, hookimpl, wire
from hive_framework.errors import PluginError
from hive_framework.models import NodeInfo, TaskMessage
from hive_framework.plugins import make_plugin_manager
from hive_framework.policies import load_score, node_meets

from .foreman_helpers import isolated_namespace


@pytest.fixture
def hive_config(hive_redis_url: str) -> Iterator[HiveConfig]:
    """A private namespace on the test Redis, without entry-point plugins (see foreman_helpers)."""
    yield from isolated_namespace(hive_redis_url)


STRATEGIES = ("load_score", "least_tasks", "round_robin")
TAGS = ("ml", "io", "eu")


def offline_config(**overrides: Any) -> HiveConfig:
    """Settings that need no Redis (pure routing)."""
    return HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None, **overrides)


@cache
def kernel_for(balancer: str) -> Kernel:
    return Kernel(offline_config(balancer=balancer), load_entry_points=False)


def node(node_id: str, **fields: Any) -> NodeInfo:
    fields.setdefault("concurrency", 10)
    return NodeInfo(node_id=node_id, node_name=node_id, host="test-host", pid=1, **fields)


def probe(requirements: dict[str, Any] | None = None) -> TaskMessage:
    return TaskMessage(task_id="probe", task_type="*", requirements=dict(requirements or {}))


# --- an independent oracle of eligibility (not node_meets itself) -------------------------------------


def fits(n: NodeInfo, requirements: dict[str, Any]) -> bool:
    caps = n.capabilities
    if n.paused:
        return False
    if "gpu" in requirements and bool(caps.get("gpu", False)) != requirements["gpu"]:
        return False
    if "tags" in requirements and not set(requirements["tags"]) <= set(caps.get("tags", [])):
        return False
    if "min_free_memory_mb" in requirements and caps.get("free_memory_mb", 0) < requirements["min_free_memory_mb"]:
        return False
    return not ("zone" in requirements and caps.get("zone") != requirements["zone"])


capabilities_st = st.fixed_dictionaries(
    {"tags": st.lists(st.sampled_from(TAGS), unique=True), "free_memory_mb": st.integers(0, 4096)},
    optional={"gpu": st.booleans(), "zone": st.sampled_from(["eu", "us"])},
)


@st.composite
def node_st(draw: st.DrawFn, node_id: str) -> NodeInfo:
    return node(
        node_id,
        cpu_usage=draw(st.floats(0, 100)),
        memory_usage=draw(st.floats(0, 100)),
        active_tasks=draw(st.integers(0, 30)),
        concurrency=draw(st.integers(1, 16)),
        paused=draw(st.booleans()),
        capabilities=draw(capabilities_st),
    )


@st.composite
def cluster_st(draw: st.DrawFn) -> tuple[list[NodeInfo], list[NodeInfo]]:
    """(online, offline): unique ids; offline nodes are known but not in the list handed to the kernel."""
    ids = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=12))
    nodes = [draw(node_st(i)) for i in ids]
    online_flags = draw(st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes)))
    online = [n for n, up in zip(nodes, online_flags, strict=True) if up]
    offline = [n for n, up in zip(nodes, online_flags, strict=True) if not up]
    return draw(st.permutations(online)), offline


requirements_st = st.fixed_dictionaries(
    {},
    optional={
        "gpu": st.booleans(),
        "tags": st.lists(st.sampled_from(TAGS), unique=True, max_size=2),
        "min_free_memory_mb": st.integers(0, 4096),
        "zone": st.sampled_from(["eu", "us"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(cluster=cluster_st(), requirements=requirements_st, strategy=st.sampled_from(STRATEGIES))
def test_no_strategy_ever_picks_an_offline_paused_or_unfit_node(cluster, requirements, strategy) -> None:
    # Given online nodes (offline ones are not in the list), some paused, with random capabilities
    online, offline = cluster
    eligible = {n.node_id for n in online if fits(n, requirements)}

    # When the configured strategy routes a task with random requirements
    picked = kernel_for(strategy).route(probe(requirements), online)

    # Then it names an eligible online node, or None exactly when there is none
    if eligible:
        assert picked in eligible
    else:
        assert picked is None
    assert picked not in {n.node_id for n in offline}
    # and node_meets agrees with the oracle on every node
    for n in online + offline:
        assert node_meets(n, requirements) == fits(attrs.evolve(n, paused=False), requirements)


@settings(max_examples=100, deadline=None)
@given(cluster=cluster_st(), requirements=requirements_st)
def test_load_score_picks_a_node_with_the_minimum_score(cluster, requirements) -> None:
    # Given random online nodes and requirements, When load_score routes
    online, _ = cluster
    eligible = [n for n in online if fits(n, requirements)]
    picked = kernel_for("load_score").route(probe(requirements), online)
    if not eligible:
        assert picked is None
        return
    # Then no eligible node has a lower score than the one picked
    weights = kernel_for("load_score").config.balancer_weights
    by_id = {n.node_id: n for n in eligible}
    assert load_score(by_id[picked], weights) == min(load_score(n, weights) for n in eligible)


@settings(max_examples=60, deadline=None)
@given(cluster=cluster_st(), requirements=requirements_st)
def test_round_robin_cycles_through_the_eligible_nodes_in_id_order(cluster, requirements) -> None:
    # Given random online nodes and requirements, k of the nodes eligible
    online, _ = cluster
    eligible = sorted(n.node_id for n in online if fits(n, requirements))
    kernel = kernel_for("round_robin")
    # When routing 2k tasks over the same k eligible nodes
    picks = [kernel.route(probe(requirements), online) for _ in range(2 * max(len(eligible), 1))]
    if not eligible:
        assert picks == [None, None]
        return
    k = len(eligible)
    # Then k consecutive picks visit every eligible node once, each the next one in id order, and repeat
    assert sorted(picks[:k]) == eligible
    start = eligible.index(picks[0])
    assert picks == [eligible[(start + i) % k] for i in range(2 * k)]


def test_load_score_is_the_seeds_formula() -> None:
    # Given a node at 50 % CPU, 20 % memory and 4 active tasks, Then its score is the seed's weighted sum
    n = node("a", cpu_usage=50.0, memory_usage=20.0, active_tasks=4)
    assert load_score(n) == pytest.approx(50 * 0.4 + 20 * 0.3 + 0.4 * 100 * 0.3)
    # and the task term saturates at 10 active tasks
    assert load_score(node("b", active_tasks=25)) == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        ({"gpu": True}, False),
        ({"gpu": False}, True),
        ({"tags": "ml"}, True),
        ({"tags": ["ml", "io"]}, False),
        ({"min_free_memory_mb": 512}, True),
        ({"min_free_memory_mb": 513}, False),
        ({"zone": "eu"}, False),
    ],
)
def test_node_meets_reads_capabilities(requirements: dict[str, Any], expected: bool) -> None:
    # Given a node without a GPU, tagged ml, with 512 MB free and no zone
    n = node("a", capabilities={"tags": ["ml"], "free_memory_mb": 512})
    # Then it meets exactly the requirements it offers
    assert node_meets(n, requirements) is expected


# --- the strategy is chosen by config, and its answer is checked -----------------------------------------


class PickFirstGiven:
    """A rogue strategy: answers whatever id it was told to, eligible or not."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    @hookimpl
    def route_task(self, task: TaskMessage, nodes: list[NodeInfo], config: HiveConfig) -> str | None:
        return self.answer


def test_an_unknown_balancer_fails_at_start_up_listing_the_installed_ones() -> None:
    # Given HIVE_BALANCER naming no strategy, When a kernel is built, Then it fails listing the installed ones
    with pytest.raises(PluginError) as caught:
        Kernel(offline_config(balancer="fastest"), load_entry_points=False)
    message = str(caught.value)
    assert "'fastest'" in message
    assert "installed: least_tasks, load_score, round_robin" in message


def test_a_strategy_answering_an_ineligible_node_is_refused_by_name() -> None:
    # Given a strategy that answers a paused node
    config = offline_config(balancer="rogue")
    pm = make_plugin_manager(config, load_entry_points=False)
    pm.register(PickFirstGiven("paused"), name="rogue")
    kernel = Kernel(config, pm=pm)
    nodes = [node("paused", paused=True), node("ok")]
    # When it routes, Then the kernel refuses the answer, naming the strategy
    with pytest.raises(PluginError, match="balancer 'rogue' picked 'paused'"):
        kernel.route(probe({"tags": []}), nodes)


def test_only_the_configured_strategy_is_asked_even_when_another_is_added_later() -> None:
    # Given least_tasks configured, and a strategy registered afterwards that always answers "busy"
    kernel = Kernel(offline_config(balancer="least_tasks"), load_entry_points=False)
    kernel.register_plugin(PickFirstGiven("busy"), name="late")
    nodes = [node("busy", active_tasks=9), node("idle", active_tasks=0)]
    # Then routing is still least_tasks'
    assert kernel.route(probe(), nodes) == "idle"
    assert "late" in kernel.balancers()


# --- ForemanAgent over a snapshot read from Redis ---------------------------------------------------------


async def write_heartbeat(broker: Any, info: NodeInfo, *, online: bool = True) -> None:
    """What a spore's heartbeat writes (online), or only the last-known record (a node that went offline)."""
    data = wire.dumps(info)
    if online:
        await broker.redis.psetex(broker.keys.node(info.node_id), 60_000, data)
        await broker.redis.sadd(broker.keys.nodes, info.node_id)
    await broker.redis.hset(broker.keys.node_infos, mapping={info.node_id: data})


SNAPSHOT = [
    # load_score: a = 0+0+15 = 15, b = 36+15+3 = 54, c = 4+3+9 = 16    least_tasks: a .5, b .1, c 1.5
    node("a", cpu_usage=0.0, memory_usage=0.0, active_tasks=5, concurrency=10),
    node("b", cpu_usage=90.0, memory_usage=50.0, active_tasks=1, concurrency=10),
    node("c", cpu_usage=10.0, memory_usage=10.0, active_tasks=3, concurrency=2, capabilities={"gpu": True}),
]


async def foreman_with_snapshot(hive_config: HiveConfig, balancer: str) -> ForemanAgent:
    kernel = Kernel(hive_config.evolve(balancer=balancer))
    broker = MessageBroker(kernel)
    await broker.connect()
    for info in SNAPSHOT:
        await write_heartbeat(broker, info)
    # an offline GPU node with the lowest load of all, and a paused idle one
    await write_heartbeat(broker, node("d-offline", capabilities={"gpu": True}), online=False)
    await write_heartbeat(broker, node("e-paused", paused=True, capabilities={"gpu": True}))
    foreman = ForemanAgent(broker)
    await foreman.refresh()
    return foreman


@pytest.mark.redis
@pytest.mark.parametrize(
    ("balancer", "expected"),
    [("load_score", ["a", "a", "a"]), ("least_tasks", ["b", "b", "b"])],
)
async def test_select_best_node_follows_the_configured_strategy(hive_config, balancer, expected) -> None:
    # Given three online nodes, one offline and one paused node, in Redis, and HIVE_BALANCER set
    foreman = await foreman_with_snapshot(hive_config, balancer)
    try:
        # When asked three times for the best node, Then the strategy's choice comes back every time
        assert [foreman.select_best_node() for _ in range(3)] == expected
        # and a GPU requirement narrows the choice to the one online, unpaused GPU node
        assert foreman.select_best_node({"gpu": True}) == "c"
        assert foreman.select_best_node({"gpu": True, "tags": ["ml"]}) is None
    finally:
        await foreman.broker.disconnect()


@pytest.mark.redis
async def test_round_robin_select_best_node_cycles_over_online_unpaused_nodes(hive_config) -> None:
    # Given the snapshot above and round_robin, When asked six times
    foreman = await foreman_with_snapshot(hive_config, "round_robin")
    try:
        picks = [foreman.select_best_node() for _ in range(6)]
        # Then every online unpaused node in turn, in id order, twice round; never the offline or paused one
        start = ["a", "b", "c"].index(picks[0])
        assert picks == [["a", "b", "c"][(start + i) % 3] for i in range(6)]
    finally:
        await foreman.broker.disconnect()


@pytest.mark.redis
async def test_cluster_status_counts_online_and_offline_nodes(hive_config) -> None:
    # Given three online nodes, one paused, one offline, When Foreman summarizes the cluster
    foreman = await foreman_with_snapshot(hive_config, "load_score")
    try:
        # Then it counts and flags each, with the seed's load scores and averages over online nodes
        status = foreman.get_cluster_status()
        assert (status["total_nodes"], status["online_nodes"], status["offline_nodes"]) == (5, 4, 1)
        rows = {row["node_id"]: row for row in status["nodes"]}
        assert rows["d-offline"]["is_online"] is False
        assert rows["e-paused"]["is_online"] is True and rows["e-paused"]["paused"] is True
        assert rows["a"]["load_score"] == 15.0 and rows["b"]["load_score"] == 54.0
        assert status["total_active_tasks"] == 5 + 1 + 3
        assert status["avg_cpu_usage"] == pytest.approx((0 + 90 + 10 + 0) / 4)
    finally:
        await foreman.broker.disconnect()


@pytest.mark.redis
async def test_foreman_agent_takes_the_seeds_constructor_forms(hive_config) -> None:
    kernel = Kernel(hive_config)
    broker = MessageBroker(kernel)
    node_manager = object()
    # Given ForemanAgent(message_broker) and ForemanAgent(kernel, message_broker, node_manager)
    one = ForemanAgent(broker)
    three = ForemanAgent(kernel, broker, node_manager)
    # Then both hold the broker and its kernel; the three-argument form keeps the node manager
    assert one.broker is broker and one.kernel is kernel and one.node_manager is None
    assert three.broker is broker and three.kernel is kernel and three.node_manager is node_manager
    assert ForemanAgent(kernel, broker).node_manager is None
    # and start() connects the broker and takes a first snapshot, stop() ends the refresh loop
    await three.start()
    try:
        assert broker.is_connected and three.last_refresh is not None
        assert three.select_best_node() is None  # nobody online yet
    finally:
        await three.stop()
        await broker.disconnect()
    # and without a broker it says what it needs
    with pytest.raises(TypeError, match=r"ForemanAgent\(message_broker\)"):
        ForemanAgent(kernel)
