"""The seed's load test as a locust scenario: 200 users send single
(query, document) pairs to `POST /rerank`, 5,000 requests in all, as the
original thread-pool script did; the run stops after the 5,000th answer.

  locust -f locustfiles/seed_pairs.py --headless --only-summary -u 200 -r 50 --max-requests 5000 \
         --host http://localhost:8000

Each answer must be 200 with a finite score in [-1, 1]; the gateway's timing
headers appear as "timing" rows (x-total-time, x-queue-time, x-inference-time).
"""

from common import budget, check, pair_problem
from locust import FastHttpUser, constant, task

PAYLOAD = {"query": "今天天气如何？", "document": "今天晴天适合外出游玩"}


class SeedPairUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def rerank_pair(self) -> None:
        budget.take()
        try:
            with self.client.post("/rerank", json=PAYLOAD, catch_response=True) as response:
                check(response, pair_problem, self.environment)
        finally:
            budget.done()
