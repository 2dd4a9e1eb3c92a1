"""Bi-encoder scorer (all-MiniLM-L6-v2): query and document are embedded
separately, mean-pooled over real tokens and L2-normalised, as
sentence-transformers does; the score is their cosine similarity.

Each distinct text is embedded once per batch, so a query shared by a
hundred documents costs one forward row, not a hundred.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rerank_engine.pairs import Pair
from rerank_engine.scoring import Encoded, Scorer
from rerank_engine.tokens import SpecialTokenTemplate, raw_tokenizer, token_ids


class BiEncoderScorer(Scorer):
    def __init__(self, model, tokenizer, **kwargs) -> None:
        self.model = model
        self.tokenizer = raw_tokenizer(tokenizer)
        self.template = SpecialTokenTemplate.from_tokenizer(self.tokenizer, pair=False)
        super().__init__(pad_id=tokenizer.pad_token_id, **kwargs)

    def encode(self, pairs: Sequence[Pair]) -> Encoded:
        # One row per distinct (text, cap): a query has no cap, a document may have the request's.
        keys = [((p.query, None), (p.document, p.max_document_tokens)) for p in pairs]
        row_of = {key: i for i, key in enumerate(dict.fromkeys(k for pair_keys in keys for k in pair_keys))}
        budget = self.max_length - self.template.num_special
        raw = token_ids(self.tokenizer, [text for text, _ in row_of])
        sequences = [
            self.template.build(ids[: budget if cap is None else min(budget, cap)])
            for ids, (_, cap) in zip(raw, row_of)
        ]
        rows = np.array([(row_of[q], row_of[d]) for q, d in keys]).reshape(-1, 2)
        lengths = np.array([len(s) for s in sequences], np.int32)
        full = np.array([len(ids) + self.template.num_special for ids in raw], np.int32)
        q, d = rows[:, 0], rows[:, 1]
        num_tokens, input_tokens = lengths[q] + lengths[d], full[q] + full[d]
        return Encoded(sequences, num_tokens, input_tokens, input_tokens > num_tokens, rows=rows)

    def forward(self, input_ids, attention_mask, lengths) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)

    def finalize(self, encoded, outputs) -> tuple[np.ndarray, np.ndarray]:
        rows = torch.from_numpy(encoded.rows)
        q, d = outputs[rows[:, 0]], outputs[rows[:, 1]]
        cosine = (q * d).sum(dim=1).numpy()
        return cosine, cosine
