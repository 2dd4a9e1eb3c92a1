"""Mixed traffic with model switches during load: rerank users send single
pairs to `POST /rerank` and 1 query x N documents to `POST /v1/rerank`
(drawn from the corpus, as in rerank_corpus.py), while one switch user calls
`POST /switch_model` every few seconds, cycling through the configured models
(starting after the active one, so the first switch is a real one).

  locust -f locustfiles/mixed_switch.py --headless --only-summary -u 50 -r 10 -t 3m \
         --switch-models minilm,bge --switch-interval 5 --documents 10 --host http://localhost:8000

With --switches K the run ends one interval after the K-th switch has
answered (CI uses it to cover a switch there and back). Every rerank answer
must be 200 and well formed whatever switch is under way; a 429 is a failure
unless --allow-429 (see common.py). /v1/rerank successes are reported per
serving model, "/v1/rerank (N docs) [model]", so the table shows that both
models carried traffic. Each switch is reported as "/switch_model <target>"
and must answer 200.
"""

import itertools
import random

from common import (
    at_least, budget, check, corpus, end_run, pair_problem, rerank_problem, switch_problem, use_corpus,
)
from locust import FastHttpUser, between, events, task
from locust.exception import StopUser

use_corpus()


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--switch-models", default="minilm,bge", env_var="LOCUST_SWITCH_MODELS",
                        help="Comma-separated aliases or Triton names the switch user cycles through.")
    parser.add_argument("--switch-interval", type=float, default=5.0, env_var="LOCUST_SWITCH_INTERVAL",
                        help="Seconds between one switch's answer and the next switch.")
    parser.add_argument("--switches", type=at_least(0), default=0, env_var="LOCUST_SWITCHES",
                        help="End the run one interval after this many switches have answered (0: no limit).")


class RerankUser(FastHttpUser):
    wait_time = between(0, 0.1)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.count = self.environment.parsed_options.documents

    @task(3)
    def pair(self) -> None:
        query, (document,) = corpus().sample(self.rng, 1)
        budget.take()
        try:
            with self.client.post("/rerank", json={"query": query, "document": document},
                                  catch_response=True) as response:
                check(response, pair_problem, self.environment)
        finally:
            budget.done()

    @task(1)
    def rerank(self) -> None:
        query, documents = corpus().sample(self.rng, self.count)
        budget.take()
        try:
            with self.client.post("/v1/rerank", json={"query": query, "documents": documents},
                                  name=f"/v1/rerank ({self.count} docs)", catch_response=True) as response:
                check(response, lambda body: rerank_problem(body, self.count), self.environment, name_by_model=True)
        finally:
            budget.done()


class SwitchUser(FastHttpUser):
    fixed_count = 1  # one switcher whatever -u is: switches are serialised by the gateway anyway
    network_timeout = 1800.0  # a switch waits for a model load: the gateway's model_load_timeout_s

    def wait_time(self) -> float:
        return self.environment.parsed_options.switch_interval

    def on_start(self) -> None:
        names = [m.strip() for m in self.environment.parsed_options.switch_models.split(",") if m.strip()]
        if not names:
            raise StopUser()  # nothing to switch to: plain rerank traffic
        with self.client.get("/models", catch_response=True) as response:
            models = check(response, lambda body: None if isinstance(body, dict) else "not an object",
                           self.environment, timings=False) or {}
        # Start from the model after the active one, so the first switch is a real one, not a no-op.
        resolved = [models.get("aliases", {}).get(n, n) for n in names]
        start = (resolved.index(models.get("active")) + 1) % len(names) if models.get("active") in resolved else 0
        self.targets = itertools.cycle(names[start:] + names[:start])
        self.answered = 0

    @task
    def switch(self) -> None:
        if 0 < self.environment.parsed_options.switches <= self.answered:
            end_run(self.environment)
            raise StopUser()
        target = next(self.targets)
        with self.client.post("/switch_model", json={"model_name": target}, name=f"/switch_model {target}",
                              catch_response=True) as response:
            check(response, switch_problem, self.environment, timings=False)
        self.answered += 1
