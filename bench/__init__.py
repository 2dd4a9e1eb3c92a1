"""Benchmarks and GPU checks, run from a checkout of the repository. The
product never imports them (load reports are `launcher.report`)."""
