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
from rerank_engine.tokens import SpecialTokenTemplate, longest_first_lengths, raw_tokenizer, token_ids


class CrossEncoderScorer(Scorer):
    def __init__(self, model, tokenizer, **kwargs) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"a cross-encoder reranker has one output label, this model has {model.config.num_labels}")
        self.model = model
        self.tokenizer = raw_tokenizer(tokenizer)
        self.template = SpecialTokenTemplate.from_tokenizer(self.tokenizer, pair=True)
        super().__init__(pad_id=tokenizer.pad_token_id, **kwargs)

    def encode(self, pairs: Sequence[Pair]) -> Encoded:
        queries = list(dict.fromkeys(p.query for p in pairs))
        query_ids = dict(zip(queries, token_ids(self.tokenizer, queries)))
        doc_ids = token_ids(self.tokenizer, [p.document for p in pairs])
        budget = self.max_length - self.template.num_special
        sequences, uncut = [], []
        for pair, doc in zip(pairs, doc_ids):
            query, document = query_ids[pair.query], self.capped(doc, pair)
            keep_q, keep_d = longest_first_lengths(len(query), len(document), budget)
            sequences.append(self.template.build(query[:keep_q], document[:keep_d]))
            uncut.append(len(query) + len(doc) + self.template.num_special)
        return Encoded(sequences, *self.counts(sequences, uncut))

    @classmethod
    def packable(cls, model) -> bool:
        # The packed forward fuses the checkpoint's own q/k/v weights; FP8 layers run padded.
        query = model.base_model.encoder.layer[0].attention.self.query
        return model.config.model_type in ("xlm-roberta", "roberta") and isinstance(query, torch.nn.Linear)

    def packed_forward(self):
        from rerank_engine.packed import PackedXLMRoberta

        if not self.packable(self.model):
            raise ValueError(f"no packed forward for {self.model.config.model_type} models")
        return PackedXLMRoberta(self.model)

    def forward(self, input_ids, attention_mask, lengths) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

    def finalize(self, encoded, outputs) -> tuple[np.ndarray, np.ndarray]:
        return torch.sigmoid(outputs).numpy(), outputs.numpy()
