"""Many processes as one server: Triton replicas (discovery, the pool), cluster-wide switching
between gateways, and the worker processes of one gateway."""
