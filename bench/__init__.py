"""Benchmarks, load reports and GPU checks. The service never imports them;
`reranker report` imports bench.report when it runs."""
