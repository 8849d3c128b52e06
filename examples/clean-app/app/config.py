"""Settings: credentials come from the environment, never from the code."""

import os

DATABASE_HOST = os.environ.get("DATABASE_HOST", "localhost")
DATABASE_USER = os.environ.get("DATABASE_USER", "app")


def database_password() -> str:
    return os.environ["DATABASE_PASSWORD"]
