"""A query built by string concatenation (planted issue)."""

import sqlite3


def find_user(connection: sqlite3.Connection, name: str) -> list[tuple[object, ...]]:
    query = "SELECT id, name FROM users WHERE name = '" + name + "'"
    return connection.execute(query).fetchall()
