"""The plugin's errors. Each is a :class:`~hive_framework.HiveError`, so the CLI prints it as one line."""

from __future__ import annotations

from hive_framework import HiveError


class OTAError(HiveError):
    """Something about an update went wrong; the message says what and, where it can, what to do."""


class PackageRejected(OTAError):
    """A package (or a command about one) failed a check; nothing was installed or switched."""


class ManifestError(PackageRejected):
    """A manifest is not valid: bad JSON, a missing or unknown field, an unsafe path, a bad version..."""
