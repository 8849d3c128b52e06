"""Benchmarks of hive-framework against raw ARQ (not tests): ``python bench/run.py``."""
