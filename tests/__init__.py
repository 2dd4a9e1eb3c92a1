"""Test tiers: engine units, gateway units, in-process app, and integration against real Triton."""
