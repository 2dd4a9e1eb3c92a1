"""The seed's load test as a locust scenario: single (query, document) pairs
against `POST /rerank`, as the original thread-pool script sent them.

  locust -f locustfiles/seed_pairs.py --headless -u 200 -r 50 -i 5000 --host http://localhost:8000
"""

from locust import FastHttpUser, constant, task

PAYLOAD = {"query": "今天天气如何？", "document": "今天晴天适合外出游玩"}


class SeedPairUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def rerank_pair(self) -> None:
        with self.client.post("/rerank", json=PAYLOAD, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            # [0, 1] for cross-encoders, [-1, 1] for minilm's cosine.
            elif not -1.0 <= response.json().get("score", 2.0) <= 1.0:
                response.failure(f"score out of range: {response.text[:200]}")
