"""Scoring engine shared by every reranker model: tokenization, prompt templates,
length-sorted micro-batching and scoring. It never imports Triton, so it can be
tested, benchmarked and reused outside the server.

Importing this package is cheap (no torch); the heavy modules load on first use.
"""
