"""Queueing engines shipped with hive-framework, each a package behind :class:`hive_framework.broker.Engine`.

``streams`` (Redis Streams with consumer groups, the default) and ``arq`` (ARQ's sorted-set queues).
They are registered as the default plugins of the same names (``create_engine``).
"""
