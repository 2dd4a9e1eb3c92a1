"""Benchmark and GPU-check tools (not imported by the service)."""
