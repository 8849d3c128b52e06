"""``python -m hive_framework``: the ``hive`` command line."""

from .cli import main

if __name__ == "__main__":
    main()
