"""The `reranker` command: starts Triton, the gateway, or both, and fetches weights."""
