"""Realistic reranking: each request is one query with N documents drawn
from a relevance corpus (by default the project's eval sets, DBpedia-Entity
and TREC DL 2019 in ../shared/data/eval/), sent to `POST /v1/rerank`.

  locust -f locustfiles/rerank_corpus.py --headless --only-summary -u 32 -r 8 -t 2m \
         --documents 20 --corpus ../shared/data/eval --host http://localhost:8000

A query's own candidates come first; beyond them, documents of other queries
fill the request. Each answer must be 200 with N results: a permutation of
the documents, sorted by relevance_score. Add --max-requests N to stop after
N requests instead of (or before) the run time.
"""

import random

from common import budget, check, corpus, rerank_problem, use_corpus
from locust import FastHttpUser, between, task

use_corpus()


class CorpusRerankUser(FastHttpUser):
    wait_time = between(0, 0.1)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.corpus = corpus()
        self.count = self.environment.parsed_options.documents

    @task
    def rerank(self) -> None:
        query, documents = self.corpus.sample(self.rng, self.count)
        budget.take()
        try:
            with self.client.post("/v1/rerank", json={"query": query, "documents": documents},
                                  name=f"/v1/rerank ({self.count} docs)", catch_response=True) as response:
                check(response, lambda body: rerank_problem(body, self.count), self.environment)
        finally:
            budget.done()
