"""parse_priority: the seed's names, levels 0-10 and numeric strings; anything else is InvalidTask."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import InvalidTask
from hive_framework.models import HIGH_PRIORITY_LEVEL, PRIORITY_NAMES
from hive_framework.policies import parse_priority


@pytest.mark.parametrize(
    ("given_value", "level"),
    [("high_priority", 10), ("background", 0), ("normal", 5), ("low", 2), ("high", 10), ("  High_Priority ", 10)],
)
def test_names_map_to_levels_ignoring_case_and_spaces(given_value: str, level: int) -> None:
    # Given a priority name as a user types it, Then it maps to its level
    assert parse_priority(given_value) == level


def test_the_seed_names_straddle_the_high_queue_threshold() -> None:
    # Given the seed's two names, Then high_priority goes to the high queue and background does not
    assert parse_priority("high_priority") >= HIGH_PRIORITY_LEVEL > parse_priority("background")


@given(level=st.integers(0, 10))
def test_levels_as_ints_and_numeric_strings(level: int) -> None:
    # Given a level 0-10 as an int or as text (with stray spaces), Then it is that level
    assert parse_priority(level) == level
    assert parse_priority(str(level)) == level
    assert parse_priority(f" {level} ") == level


@given(level=st.integers().filter(lambda n: not 0 <= n <= 10))
def test_out_of_range_levels_are_refused(level: int) -> None:
    # Given a whole number outside 0-10, as int or text, Then it is InvalidTask
    with pytest.raises(InvalidTask, match="0"):
        parse_priority(level)
    with pytest.raises(InvalidTask):
        parse_priority(str(level))


@pytest.mark.parametrize(
    "bad",
    [True, False, None, 5.0, 1.5, [5], {"level": 5}, b"5", "", "urgent", "5.0", "²", "--5", "+-5", "1" * 5000, "٣x"],
)
def test_garbage_is_invalid_task(bad: Any) -> None:
    # Given a bool (an int subclass), a float, a container or text that is neither a name nor a level
    # Then it is InvalidTask naming the value, never TypeError/ValueError from deeper down
    with pytest.raises(InvalidTask, match="bad priority"):
        parse_priority(bad)


@given(text=st.text())
def test_any_text_is_a_level_or_invalid_task(text: str) -> None:
    # Given arbitrary text from a CLI flag or JSON body
    try:
        level = parse_priority(text)
    except InvalidTask:
        return
    # Then when it is accepted it really was a name or a number, and the level is on the scale
    assert 0 <= level <= 10
    stripped = text.strip().lower()
    assert PRIORITY_NAMES.get(stripped) == level or int(stripped) == level


@given(value=st.one_of(st.none(), st.floats(), st.booleans(), st.binary(), st.lists(st.integers())))
def test_non_int_non_str_values_are_invalid_task(value: Any) -> None:
    with pytest.raises(InvalidTask):
        parse_priority(value)
