pytest_plugins = ["hive_framework.testing"]
