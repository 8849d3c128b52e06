"""A deliberately insecure sample application (see ../README.md): never run it."""
