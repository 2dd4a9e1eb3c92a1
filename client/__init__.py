"""Python client for the Reranker gateway, synchronous and asynchronous."""

from client.client import AsyncRerankerClient, RerankerClient, RerankerError

__all__ = ["AsyncRerankerClient", "RerankerClient", "RerankerError"]
