"""The safe twin of the vulnerable sample application."""
