"""Way (a): the seed's scoring, re-implemented honestly with plain transformers
and none of this project's engine, as the reference the engine is measured
against.

What the seed did, and so what this does:
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

    def __init__(self, folder: Path, scorer: str, max_length: int, device) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.kind = scorer
        self.device = device
        self.max_length = max_length
        classes = {"cross_encoder": AutoModelForSequenceClassification, "qwen3_reranker": AutoModelForCausalLM,
                   "bi_encoder": AutoModel}
        self.model = classes[scorer].from_pretrained(folder, dtype=torch.float32).to(device).eval()
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
