"""Hive Monitor: the live web dashboard, JSON API and Prometheus ``/metrics`` that ``hive nexus`` serves.

:class:`Monitor` reads the cluster from Redis (nodes, queues, tasks, jobs, trouble); :func:`create_app`
is the Starlette app over it; :class:`MonitorServer` runs that app with uvicorn inside the nexus's event loop.
Importing ``hive_framework`` never imports this package: the nexus loads it only when the monitor is on.
"""

from __future__ import annotations

from .app import MonitorServer, create_app
from .collector import Monitor

__all__ = ["Monitor", "MonitorServer", "create_app"]
