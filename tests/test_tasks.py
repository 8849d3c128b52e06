"""The @task decorator and TaskType: names, defaults, sync vs async, the context parameter."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import HiveConfig, Kernel, TaskContext, TaskMessage, TaskType, task
from hive_framework.default_plugins.tasks import run_handler
from hive_framework.tasks import TASK_NAME_RE


def test_bare_decorator_uses_the_function_name_and_defaults() -> None:
    # Given a handler decorated without arguments
    @task
    def resize(payload: dict[str, Any]) -> int:
        """Resize an image.

        More detail that is not part of the summary.
        """
        return 1

    # Then it is a TaskType named after the function, with the defaults (None: take the hive's config)
    assert isinstance(resize, TaskType)
    assert resize.name == "resize"
    assert (resize.priority, resize.timeout, resize.max_retries) == ("background", None, None)
    assert (resize.requirements, resize.reducer) == ({}, None)
    assert resize.description == "Resize an image."
    # And it can still be called as the plain function
    assert resize({}) == 1


def test_every_option_is_kept() -> None:
    needs = {"gpu": True, "tags": ["ml"]}

    # Given every option set
    @task("ml.embed", priority="high_priority", timeout=30, max_retries=2, requires=needs, reducer="concat")
    async def embed(payload: dict[str, Any]) -> list[float]:
        return [0.0]

    # Then each is kept, and the requirements are a copy (mutating the caller's dict changes nothing)
    assert embed.name == "ml.embed"
    assert (embed.priority, embed.timeout, embed.max_retries, embed.reducer) == ("high_priority", 30, 2, "concat")
    needs["gpu"] = False
    assert embed.requirements == {"gpu": True, "tags": ["ml"]}
    assert embed.description == ""


def test_sync_and_async_handlers_are_told_apart() -> None:
    @task("s")
    def sync_handler(payload: dict[str, Any]) -> None:
        return None

    @task("a")
    async def async_handler(payload: dict[str, Any]) -> None:
        return None

    assert not sync_handler.is_async
    assert async_handler.is_async


def test_the_context_parameter_is_detected_by_name() -> None:
    @task("with_ctx")
    def with_ctx(payload: dict[str, Any], context: TaskContext) -> None:
        return None

    @task("without_ctx")
    def without_ctx(payload: dict[str, Any]) -> None:
        return None

    @task("ctx_is_keyword_only")
    async def keyword_ctx(payload: dict[str, Any], *, context: TaskContext) -> None:
        return None

    assert with_ctx.wants_context
    assert not without_ctx.wants_context
    assert keyword_ctx.wants_context


@pytest.mark.parametrize(
    "name",
    ["", "1starts_with_digit", "has space", "semi;colon", "slash/ed", "x" * 129, "-dash-first", "trailing_newline\n",
     "é"],
)
def test_bad_names_are_rejected(name: str) -> None:
    # Given a name that cannot be a task type, Then declaring it fails naming it
    with pytest.raises(ValueError, match="bad task type name"):
        task(name)(lambda payload: None)


@given(name=st.from_regex(TASK_NAME_RE, fullmatch=True))
def test_names_matching_the_rule_are_accepted(name: str) -> None:
    assert task(name)(lambda payload: None).name == name


@given(name=st.text(max_size=140))
def test_any_text_as_a_name_is_accepted_or_a_value_error(name: str) -> None:
    # Given arbitrary text as a task name, Then it is either accepted as-is or refused with ValueError
    try:
        declared = task(name)(lambda payload: None)
    except ValueError:
        assert TASK_NAME_RE.fullmatch(name) is None
    else:
        assert declared.name == name and TASK_NAME_RE.fullmatch(name)


# --- running handlers -------------------------------------------------------------------------------------


def context() -> TaskContext:
    kernel = Kernel(HiveConfig(), load_entry_points=False)
    message = TaskMessage(task_id="t", task_type="x")
    return TaskContext(task=message, node_id="n", node_name="n", kernel=kernel, redis=None,  # type: ignore[arg-type]
                       logger=logging.getLogger("test"))


async def test_run_handler_passes_context_only_to_handlers_that_ask() -> None:
    seen: list[Any] = []

    @task("asks")
    async def asks(payload: dict[str, Any], context: TaskContext) -> str:
        seen.append(context)
        return "asks"

    @task("does_not_ask")
    def does_not_ask(payload: dict[str, Any]) -> str:
        return f"plain {payload['n']}"

    ctx = context()
    # When each is run, Then the one that asked got the context and the other ran fine without it
    assert await run_handler(asks, {}, ctx) == "asks"
    assert seen == [ctx]
    assert await run_handler(does_not_ask, {"n": 1}, ctx) == "plain 1"


async def test_a_sync_handler_sees_the_context_variables_of_the_attempt() -> None:
    # Given a context variable set in the attempt's asyncio task (as a before_task hook sets a trace span)
    current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="unset")
    current.set("set by before_task")

    @task("reads_it")
    def reads_it(payload: dict[str, Any]) -> str:
        seen = current.get()
        current.set("changed by the handler")
        return seen

    # When a sync handler runs (in a worker thread), Then it sees the value, and its own changes stay its own
    assert await run_handler(reads_it, {}, context()) == "set by before_task"
    assert current.get() == "set by before_task"


async def test_a_blocking_sync_handler_does_not_block_the_event_loop() -> None:
    # Given a sync handler that blocks until the event loop has made progress
    loop_ran = asyncio.Event()
    loop = asyncio.get_running_loop()

    @task("blocker")
    def blocker(payload: dict[str, Any]) -> str:
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(loop_ran.wait(), 5), loop).result()
        return "unblocked"

    async def mark() -> None:
        loop_ran.set()

    # When it runs alongside another coroutine, Then both complete (it ran in a worker thread)
    result, _ = await asyncio.wait_for(asyncio.gather(run_handler(blocker, {}, context()), mark()), 10)
    assert result == "unblocked"
