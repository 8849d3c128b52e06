"""What the launcher tells the spore process about itself (set before hive starts; read by the plugin)."""

from __future__ import annotations

#: True when this process was started by an OTA supervisor (``hive ota spore``), which can switch releases.
SUPERVISED: bool = False
#: The OTA folder the supervisor owns.
ROOT: str | None = None
#: Name of the release folder this process runs (``None``: no release installed yet).
RELEASE: str | None = None
#: Its version (empty without a release).
VERSION: str = ""
