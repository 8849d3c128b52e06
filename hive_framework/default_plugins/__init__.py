"""Built-in plugins, registered by :func:`hive_framework.plugins.make_plugin_manager` like any other."""
