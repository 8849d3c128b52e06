"""Listing a folder by handing user input to a shell (planted issue)."""

import subprocess


def list_folder(folder: str) -> str:
    completed = subprocess.run(f"ls -l {folder}", shell=True, capture_output=True, text=True, check=False)
    return completed.stdout
