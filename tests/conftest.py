"""hive_framework.testing's fixtures arrive through its pytest11 entry point (see pyproject.toml)."""
