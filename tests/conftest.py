"""hive_framework.testing's fixtures arrive through its pytest11 entry point (see pyproject.toml)."""

from hypothesis import settings

# Property tests run on shared, sometimes busy machines: a slow example is not a failure, so no deadline.
settings.register_profile("hive", deadline=None)
settings.load_profile("hive")
