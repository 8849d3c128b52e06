"""hive_framework.testing's fixtures arrive through its pytest11 entry point (see pyproject.toml)."""

import signal

from hypothesis import settings

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would every
# `hive up` and shell the tests start: Ctrl-C, which several tests send them, would then do nothing. As in a
# terminal, Ctrl-C gets its default here, and the processes the tests start inherit that.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Property tests run on shared, sometimes busy machines: a slow example is not a failure, so no deadline.
settings.register_profile("hive", deadline=None)
settings.load_profile("hive")

