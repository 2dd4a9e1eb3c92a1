"""Cross-encoder scorer (bge-reranker-base): the pair goes through a sequence
classifier with one output, and the score is sigmoid(logit), as
sentence-transformers' `CrossEncoder` computes it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rerank_engine.pairs import Pair
from rerank_engine.scoring import Encoded, Scorer
from rerank_engine.tokens import SpecialTokenTemplate, keep, longest_first_lengths, raw_tokenizer, token_ids


class CrossEncoderScorer(Scorer):
    def __init__(self, model, tokenizer, **kwargs) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"a cross-encoder reranker has one output label, this model has {model.config.num_labels}")
        self.model = model
        self.tokenizer = raw_tokenizer(tokenizer)
        self.template = SpecialTokenTemplate.from_tokenizer(self.tokenizer, pair=True)
        super().__init__(pad_id=tokenizer.pad_token_id, **kwargs)

    def encode(self, pairs: Sequence[Pair], documents: Sequence[list[int]] | None = None) -> Encoded:
        query_ids = self._query_ids(pairs)
        doc_ids = self.document_ids(pairs) if documents is None else documents
        sequences, uncut = [], []
        for pair, doc in zip(pairs, doc_ids):
            budget = self.limit(pair) - self.template.num_special
            query, document = query_ids[pair.query], self.capped(doc, pair)
            keep_q, keep_d = longest_first_lengths(len(query), len(document), budget)
            sequences.append(self.template.build(keep(query, keep_q, pair.keep_end), keep(document, keep_d, pair.keep_end)))
            uncut.append(len(query) + len(doc) + self.template.num_special)
        return Encoded(sequences, *self.counts(sequences, uncut))

    def document_room(self, pairs: Sequence[Pair]) -> list[int]:
        # What longest_first leaves the document when it is longer than the whole budget.
        query_ids = self._query_ids(pairs)
        rooms = []
        for pair in pairs:
            budget = self.window_limit(pair) - self.template.num_special
            rooms.append(longest_first_lengths(len(query_ids[pair.query]), budget + 1, budget)[1])
        return rooms

    def _query_ids(self, pairs: Sequence[Pair]) -> dict[str, list[int]]:
        queries = list(dict.fromkeys(p.query for p in pairs))
        return dict(zip(queries, token_ids(self.tokenizer, queries)))

    def check(self, pairs: Sequence[Pair]) -> None:
        shortest = self.template.num_special + 2
        if any(self.limit(pair) < shortest for pair in pairs):
            raise ValueError(f"a sequence of this model needs at least {shortest} tokens (its special tokens, "
                             "one of the query and one of the document)")

    @classmethod
    def packable(cls, model) -> bool:
        # The packed forward fuses the checkpoint's own q/k/v weights; FP8 layers run padded.
        query = model.base_model.encoder.layer[0].attention.self.query
        return model.config.model_type in ("xlm-roberta", "roberta") and isinstance(query, torch.nn.Linear)

    def packed_forward(self):
        from rerank_engine.packed import PackedXLMRoberta

        if not self.packable(self.model):
            raise ValueError(f"no packed forward for {self.model.config.model_type} models")
        return PackedXLMRoberta(self.model, fusions=self.execution.fusions, compile=self.execution.compile)

    def forward(self, input_ids, attention_mask, lengths) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

    def finalize(self, encoded, outputs) -> tuple[np.ndarray, np.ndarray]:
        return torch.sigmoid(outputs).numpy(), outputs.numpy()
