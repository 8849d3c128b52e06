"""The engine contract suite (shipped in hive_framework.testing) on the engine this run tests (HIVE_TEST_BROKER)."""

from hive_framework.testing.engine_contract import *  # noqa: F403
