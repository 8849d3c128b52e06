"""Fixtures of the OTA tests; helpers live in ota_helpers. hive's own fixtures come through its pytest11 entry point."""

from hypothesis import settings
from ota_helpers import keys, ota_hive

__all__ = ["keys", "ota_hive"]

# Property tests run on shared, sometimes busy machines: a slow example is not a failure, so no deadline.
settings.register_profile("hive-ota", deadline=None)
settings.load_profile("hive-ota")
