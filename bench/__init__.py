"""Benchmarks for orchestrate (not shipped in the package): see bench/README.md."""
