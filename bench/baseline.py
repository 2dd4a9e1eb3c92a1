"""The baselines the engine is measured against, written from the libraries'
documentation and the model cards, with none of this project's engine.

Way (a): the seed's scoring, re-implemented honestly with plain transformers.
Way (d) (`LibraryScorer`, at the end): what users run today without a server.

Way (a), what the seed did, and so what this does:
- float32 weights, torch's default attention and settings;
- batches of at most 8 pairs (`SEED_BATCH_PAIRS`) in arrival order, padded to
  the longest pair of the batch, with no sorting by length;
- bge-reranker-base: `tokenizer(queries, documents, padding=True,
  truncation=True, max_length=512)`, sigmoid of the logit;
- Qwen3-Reranker: the model card's recipe (left padding, prefix + body +
  suffix, `longest_first` truncation of the body), reading the last position
  of the full-vocabulary logits, `AutoModelForCausalLM(...).logits[:, -1, :]`,
  computed at every position as the model card's code does;
- all-MiniLM-L6-v2 (not in the seed): sentence-transformers' recipe in plain
  transformers, query and documents embedded per batch, mean pooling,
  normalised, cosine.
"""

from __future__ import annotations

from pathlib import Path

SEED_BATCH_PAIRS = 8
SEED_BATCH_WINDOW_S = 0.005
"""The seed's batch worker waited a short time window for a batch to fill; its value is
not in the seed's README, so 5 ms, about Triton's delays here (1-5 ms)."""

# The Qwen3-Reranker model card's prompt, as published.
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class SeedStyleScorer:
    """`score(pairs)` -> (scores, tokens per pair), one padded forward pass for the whole list."""

    def __init__(self, folder: Path, scorer: str, max_length: int, device, dtype=None) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.kind = scorer
        self.device = device
        self.max_length = max_length
        classes = {"cross_encoder": AutoModelForSequenceClassification, "qwen3_reranker": AutoModelForCausalLM,
                   "bi_encoder": AutoModel}
        # The seed ran float32; way (d) reuses the Qwen3 recipe in bfloat16.
        self.model = classes[scorer].from_pretrained(folder, dtype=dtype or torch.float32).to(device).eval()
        if scorer == "qwen3_reranker":
            self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
            self.no_id, self.yes_id = self.tokenizer.convert_tokens_to_ids(["no", "yes"])
            self.prefix = self.tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
            self.suffix = self.tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def score(self, pairs: list[tuple[str, str]]) -> tuple[list[float], list[int]]:
        with self.torch.no_grad():
            if self.kind == "cross_encoder":
                return self._cross_encoder(pairs)
            if self.kind == "qwen3_reranker":
                return self._qwen3(pairs)
            return self._bi_encoder(pairs)

    def _cross_encoder(self, pairs):
        inputs = self.tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits.view(-1).float()
        return self.torch.sigmoid(logits).cpu().tolist(), inputs["attention_mask"].sum(dim=1).tolist()

    def _qwen3(self, pairs):
        texts = [f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
        body = self.tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                              max_length=self.max_length - len(self.prefix) - len(self.suffix))
        ids = [self.prefix + row + self.suffix for row in body["input_ids"]]
        inputs = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        # The seed's cost: logits over the whole vocabulary at every position, of which
        # two entries of the last position are read.
        last = self.model(**inputs).logits[:, -1, :]
        answer = self.torch.stack([last[:, self.no_id], last[:, self.yes_id]], dim=1).float()
        probabilities = self.torch.nn.functional.log_softmax(answer, dim=1)[:, 1].exp()
        return probabilities.cpu().tolist(), [len(row) for row in ids]

    def _bi_encoder(self, pairs):
        def embed(texts):
            inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt").to(self.device)
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return self.torch.nn.functional.normalize(pooled, p=2, dim=1), inputs["attention_mask"].sum(dim=1)

        queries, query_tokens = embed([q for q, _ in pairs])
        documents, document_tokens = embed([d for _, d in pairs])
        return (queries * documents).sum(dim=1).cpu().tolist(), (query_tokens + document_tokens).tolist()


# ---------------------------------------------------------------------------------------------
# Way (d): the strongest thing users run today without a server


LIBRARY_BATCH_SIZES = {"cross_encoder": (16, 32, 64, 128, 256), "bi_encoder": (16, 32, 64, 128, 256),
                       "qwen3_reranker": (4, 8, 16, 32, 64)}
"""Batch sizes way (d) tries at load; it then runs at the fastest."""


class LibraryScorer:
    """`score(pairs)` -> (scores, tokens per pair) the way a user scores with the libraries directly:

    - bge-reranker-base: sentence-transformers' `CrossEncoder` in float16 (on a GPU), `predict` with
      sigmoid, at its best batch size;
    - all-MiniLM-L6-v2: sentence-transformers' `SentenceTransformer.encode` in float16, cosine;
    - Qwen3-Reranker: the model card's transformers recipe in bfloat16 (on a GPU), its pairs sorted by
      length and run in batches of the best size (left padding, P(yes) from the last position's
      logits, computed as the card computes them).
    """

    def __init__(self, folder: Path, scorer: str, max_length: int, device) -> None:
        import torch

        self.torch = torch
        self.kind = scorer
        self.device = device
        self.max_length = max_length
        half = device.type == "cuda"
        if scorer == "cross_encoder":
            from sentence_transformers import CrossEncoder

            self.model = CrossEncoder(str(folder), max_length=max_length, device=str(device))
            if half:
                self.model.model.half()
            self.dtype = "float16" if half else "float32"
        elif scorer == "bi_encoder":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(folder), device=str(device))
            self.model.max_seq_length = max_length
            if half:
                self.model.half()
            self.dtype = "float16" if half else "float32"
        else:
            self.seed = SeedStyleScorer(folder, scorer, max_length, device,
                                        dtype=torch.bfloat16 if half else torch.float32)
            self.dtype = "bfloat16" if half else "float32"
        self.batch_size = LIBRARY_BATCH_SIZES[scorer][0]
        self.sweep: dict[int, float] = {}

    def tune(self, pairs: list[tuple[str, str]], rounds: int = 2) -> int:
        """Time every candidate batch size on `pairs` and keep the fastest (pairs/s per size in `sweep`)."""
        import time

        for size in LIBRARY_BATCH_SIZES[self.kind]:
            self.batch_size = size
            self.score(pairs[: 2 * size])  # warm-up: new shapes, lazy set-up
            started = time.perf_counter()
            for _ in range(rounds):
                self.score(pairs)
            if self.device.type == "cuda":
                self.torch.cuda.synchronize(self.device)
            self.sweep[size] = round(rounds * len(pairs) / (time.perf_counter() - started), 1)
        self.batch_size = max(self.sweep, key=self.sweep.get)
        return self.batch_size

    def score(self, pairs: list[tuple[str, str]]) -> tuple[list[float], list[int]]:
        if self.kind == "cross_encoder":
            scores = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=self.torch.nn.Sigmoid(),
                                        show_progress_bar=False, convert_to_numpy=True)
            tokens = self.model.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True,
                                          max_length=self.max_length)["input_ids"]
            return [float(s) for s in scores], [len(t) for t in tokens]
        if self.kind == "bi_encoder":
            queries = self.model.encode([q for q, _ in pairs], batch_size=self.batch_size, convert_to_tensor=True,
                                        normalize_embeddings=True, show_progress_bar=False)
            documents = self.model.encode([d for _, d in pairs], batch_size=self.batch_size, convert_to_tensor=True,
                                          normalize_embeddings=True, show_progress_bar=False)
            tokenizer = self.model.tokenizer
            tokens = [len(tokenizer(q, truncation=True, max_length=self.max_length)["input_ids"])
                      + len(tokenizer(d, truncation=True, max_length=self.max_length)["input_ids"]) for q, d in pairs]
            return (queries * documents).sum(dim=1).float().cpu().tolist(), tokens
        # Qwen3: sort by length, so each batch pads little, then the card's recipe batch by batch.
        lengths = [len(q) + len(d) for q, d in pairs]
        order = sorted(range(len(pairs)), key=lambda i: lengths[i])
        scores, tokens = [0.0] * len(pairs), [0] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            got, counted = self.seed.score([pairs[i] for i in batch])
            for i, s, t in zip(batch, got, counted):
                scores[i], tokens[i] = s, t
        return scores, tokens
