"""Serving one gateway's requests: the use cases, the model manager and its leases, the priority
budgets, and the one door to Triton."""
