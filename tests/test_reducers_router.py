"""Default reducers (through kernel.reduce) and the default router (node_meets, load_score, kernel.route)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import HiveConfig, Kernel, NodeInfo, PluginError, TaskMessage, hookimpl
from hive_framework.policies import load_score, node_meets

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
results_lists = st.lists(json_values, max_size=8)


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return Kernel(HiveConfig(), load_entry_points=False)


# --- reducers -------------------------------------------------------------------------------------------


@given(results=results_lists)
def test_collect_and_count(kernel: Kernel, results: list[Any]) -> None:
    # Given any results, Then collect keeps them in order and count counts them
    assert kernel.reduce("collect", results) == results
    assert kernel.reduce("count", results) == len(results)


@given(results=results_lists)
def test_sum_adds_numbers_and_ignores_everything_else(kernel: Kernel, results: list[Any]) -> None:
    # Given mixed results, Then sum adds the ints and floats only (a bool is not a number here)
    numbers = [r for r in results if isinstance(r, int | float) and not isinstance(r, bool)]
    assert kernel.reduce("sum", results) == sum(numbers)


@given(results=results_lists)
def test_concat_flattens_one_level(kernel: Kernel, results: list[Any]) -> None:
    # Given lists and single values, Then concat splices lists in and appends the rest, in order
    expected: list[Any] = []
    for r in results:
        expected.extend(r if isinstance(r, list) else [r])
    assert kernel.reduce("concat", results) == expected


def test_concat_and_merge_examples(kernel: Kernel) -> None:
    assert kernel.reduce("concat", [[1, 2], 3, [[4]], []]) == [1, 2, 3, [4]]
    # Given dicts (and non-dicts), Then merge combines the dicts, later ones winning, skipping the rest
    assert kernel.reduce("merge", [{"a": 1, "b": 1}, "skip", {"b": 2}, None]) == {"a": 1, "b": 2}


@given(results=st.lists(st.dictionaries(st.text(max_size=3), json_values, max_size=3), max_size=5))
def test_merge_equals_successive_updates(kernel: Kernel, results: list[dict[str, Any]]) -> None:
    expected: dict[str, Any] = {}
    for r in results:
        expected.update(r)
    assert kernel.reduce("merge", results) == expected


def test_empty_results_reduce_to_empty_values_not_none(kernel: Kernel) -> None:
    # Given no results (every item failed), Then each reducer still answers (None would mean "unknown")
    assert [kernel.reduce(name, []) for name in ("collect", "concat", "sum", "count", "merge")] == [[], [], 0, 0, {}]


def test_unknown_reducer_is_a_plugin_error_naming_it(kernel: Kernel) -> None:
    with pytest.raises(PluginError, match="'median'"):
        kernel.reduce("median", [1, 2, 3])


def test_a_plugin_can_add_a_reducer_and_override_a_default() -> None:
    class Extra:
        @hookimpl
        def reduce(self, reducer: str, results: list[Any]) -> Any:
            if reducer == "max":
                return max(results)
            if reducer == "count":
                return f"{len(results)} items"
            return None

    # Given a plugin with its own reducers
    kernel = Kernel(HiveConfig(), plugins=[Extra()], load_entry_points=False)
    # Then its new one works, it wins over the built-in it overrides, and other names fall through
    assert kernel.reduce("max", [3, 9, 2]) == 9
    assert kernel.reduce("count", [1, 2]) == "2 items"
    assert kernel.reduce("sum", [1, 2]) == 3


# --- node_meets and load_score --------------------------------------------------------------------------


def node(node_id: str = "n", **fields: Any) -> NodeInfo:
    return NodeInfo(node_id=node_id, node_name=node_id, host="h", pid=1, **fields)


@pytest.mark.parametrize(
    ("caps", "needs", "meets"),
    [
        ({}, {}, True),
        ({"gpu": True}, {"gpu": True}, True),
        ({}, {"gpu": True}, False),
        ({"gpu": False}, {"gpu": True}, False),
        ({"tags": ["ml", "io"]}, {"tags": ["ml"]}, True),
        ({"tags": ["ml", "io"]}, {"tags": ["ml", "io"]}, True),
        ({"tags": ["io"]}, {"tags": ["ml"]}, False),
        ({"tags": ["ml"]}, {"tags": "ml"}, True),  # a lone string is one tag, not its letters
        ({"tags": ["m", "l"]}, {"tags": "ml"}, False),
        ({"free_memory_mb": 2048}, {"min_free_memory_mb": 1024}, True),
        ({"free_memory_mb": 512}, {"min_free_memory_mb": 1024}, False),
        ({}, {"min_free_memory_mb": 1}, False),
        ({"region": "eu"}, {"region": "eu"}, True),
        ({"region": "us"}, {"region": "eu"}, False),
    ],
)
def test_node_meets(caps: dict[str, Any], needs: dict[str, Any], meets: bool) -> None:
    # Given a node's capabilities and a task's requirements, Then node_meets tells whether it qualifies
    assert node_meets(node(capabilities=caps), needs) is meets


def test_load_score_is_the_seed_formula() -> None:
    # cpu*0.4 + mem*0.3 + min(active/10, 1)*100*0.3
    assert load_score(node(cpu_usage=50, memory_usage=50, active_tasks=5)) == pytest.approx(20 + 15 + 15)
    assert load_score(node()) == 0
    # Active tasks stop counting at 10
    assert load_score(node(active_tasks=10)) == load_score(node(active_tasks=500)) == pytest.approx(30)


# --- routing over arbitrary clusters --------------------------------------------------------------------

TAGS = ["gpu", "ml", "io"]


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeInfo]:
    count = draw(st.integers(0, 6))
    return [
        node(
            f"node-{i}",
            cpu_usage=draw(st.floats(0, 100)),
            memory_usage=draw(st.floats(0, 100)),
            active_tasks=draw(st.integers(0, 20)),
            concurrency=draw(st.integers(1, 8)),
            paused=draw(st.booleans()),
            capabilities={
                "tags": draw(st.lists(st.sampled_from(TAGS), unique=True)),
                "free_memory_mb": draw(st.integers(0, 4096)),
            },
        )
        for i in range(count)
    ]


requirements = st.fixed_dictionaries(
    {},
    optional={
        "tags": st.lists(st.sampled_from(TAGS), unique=True, min_size=1),
        "min_free_memory_mb": st.integers(0, 4096),
    },
).filter(bool)


@given(nodes=clusters(), needs=requirements)
def test_route_picks_the_least_loaded_eligible_node_or_none(
    kernel: Kernel, nodes: list[NodeInfo], needs: dict[str, Any]
) -> None:
    # Given any cluster and a task with requirements
    task = TaskMessage(task_id="t", task_type="x", requirements=needs)
    eligible = [n for n in nodes if not n.paused and node_meets(n, needs)]
    # When the kernel routes it
    chosen = kernel.route(task, nodes)
    # Then with no eligible node it stays on the shared queues...
    if not eligible:
        assert chosen is None
        return
    # ...else it goes to an eligible node with the lowest load score (never a paused or unfit one)
    picked = next(n for n in eligible if n.node_id == chosen)
    assert load_score(picked) == min(load_score(n) for n in eligible)


@given(nodes=clusters(), needs=requirements)
def test_routing_does_not_depend_on_the_order_nodes_are_listed(
    kernel: Kernel, nodes: list[NodeInfo], needs: dict[str, Any]
) -> None:
    # Given the same cluster listed in reverse, Then the least-loaded node chosen has the same score
    task = TaskMessage(task_id="t", task_type="x", requirements=needs)
    first, second = kernel.route(task, nodes), kernel.route(task, list(reversed(nodes)))
    assert (first is None) == (second is None)
    if first is not None:
        by_id = {n.node_id: n for n in nodes}
        assert load_score(by_id[first]) == load_score(by_id[second])


def test_route_example() -> None:
    # Given a busy GPU node, an idle GPU node that is paused, and an idle GPU node
    nodes = [
        node("busy", cpu_usage=90, capabilities={"gpu": True}),
        node("paused", capabilities={"gpu": True}, paused=True),
        node("idle", cpu_usage=5, capabilities={"gpu": True}),
        node("cpu-only", capabilities={}),
    ]
    kernel = Kernel(HiveConfig(), load_entry_points=False)
    task = TaskMessage(task_id="t", task_type="x", requirements={"gpu": True})
    # Then the idle, unpaused GPU node gets the task
    assert kernel.route(task, nodes) == "idle"
    # And with no GPU node online it is left to the shared queues
    assert kernel.route(task, nodes[3:]) is None


def test_a_route_task_plugin_added_later_does_not_bypass_the_configured_balancer() -> None:
    class AlwaysLast:
        @hookimpl
        def route_task(self, task: TaskMessage, nodes: list[NodeInfo]) -> str | None:
            return nodes[-1].node_id if nodes else None

    # Given a kernel using the default balancer, and a routing plugin registered after start-up
    kernel = Kernel(HiveConfig(), load_entry_points=False)
    kernel.register_plugin(AlwaysLast(), name="always_last")
    nodes = [node("idle", cpu_usage=1), node("busy", cpu_usage=90)]
    # Then routing is still the configured balancer's (least loaded), not the newcomer's
    task = TaskMessage(task_id="t", task_type="x", requirements={"min_free_memory_mb": 0})
    assert kernel.route(task, nodes) == "idle"
