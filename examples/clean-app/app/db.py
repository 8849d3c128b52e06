"""A parameterised query."""

import sqlite3


def find_user(connection: sqlite3.Connection, name: str) -> list[tuple[object, ...]]:
    return connection.execute("SELECT id, name FROM users WHERE name = ?", (name,)).fetchall()
