"""Listing a folder without a shell."""

from pathlib import Path


def list_folder(folder: str) -> str:
    return "\n".join(sorted(entry.name for entry in Path(folder).iterdir()))
