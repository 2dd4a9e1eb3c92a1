"""Bi-encoder scorer (all-MiniLM-L6-v2): query and document are embedded
separately, mean-pooled over real tokens and L2-normalised, as
sentence-transformers does; the score is their cosine similarity.

Each distinct text is embedded once per batch, so a query shared by a
hundred documents costs one forward row, not a hundred (and one shared by a
document's chunk windows, one row for them all).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rerank_engine.pairs import Pair
from rerank_engine.scoring import Encoded, Scorer
from rerank_engine.tokens import SpecialTokenTemplate, keep, raw_tokenizer, token_ids


class BiEncoderScorer(Scorer):
    def __init__(self, model, tokenizer, **kwargs) -> None:
        self.model = model
        self.tokenizer = raw_tokenizer(tokenizer)
        self.template = SpecialTokenTemplate.from_tokenizer(self.tokenizer, pair=False)
        super().__init__(pad_id=tokenizer.pad_token_id, **kwargs)

    def encode(self, pairs: Sequence[Pair], documents: Sequence[list[int]] | None = None) -> Encoded:
        # One row per distinct text under the same cut: a query shared by every pair is embedded once, and
        # so is a document that is also the query. Chunk windows (`documents`) are rows of their own.
        texts = list(dict.fromkeys([p.query for p in pairs] + ([] if documents is not None else [p.document for p in pairs])))
        ids = dict(zip(texts, token_ids(self.tokenizer, texts)))
        row_of: dict[tuple, int] = {}
        sequences: list[list[int]] = []
        full: list[int] = []

        def row(key: tuple, text_ids: list[int], count: int, from_end: bool) -> int:
            if key not in row_of:
                row_of[key] = len(sequences)
                sequences.append(self.template.build(keep(text_ids, count, from_end)))
                full.append(len(text_ids) + self.template.num_special)
            return row_of[key]

        rows = []
        for index, pair in enumerate(pairs):
            budget = self.limit(pair) - self.template.num_special
            query = row((pair.query, budget, pair.keep_end), ids[pair.query], budget, pair.keep_end)
            if documents is not None:
                document = row(("window", index), documents[index], budget, pair.keep_end)
            else:
                cut = budget if pair.max_document_tokens is None else min(budget, pair.max_document_tokens)
                document = row((pair.document, cut, pair.keep_end), ids[pair.document], cut, pair.keep_end)
            rows.append((query, document))
        rows = np.array(rows).reshape(-1, 2)
        lengths = np.array([len(s) for s in sequences], np.int32)
        q, d = rows[:, 0], rows[:, 1]
        num_tokens, input_tokens = lengths[q] + lengths[d], np.array(full, np.int32)[q] + np.array(full, np.int32)[d]
        return Encoded(sequences, num_tokens, input_tokens, input_tokens > num_tokens, rows=rows)

    def document_room(self, pairs: Sequence[Pair]) -> list[int]:
        # Query and document are embedded apart: a window is the model's whole sequence.
        return [self.window_limit(pair) - self.template.num_special for pair in pairs]

    def check(self, pairs: Sequence[Pair]) -> None:
        shortest = self.template.num_special + 1
        if any(self.limit(pair) < shortest for pair in pairs):
            raise ValueError(f"a sequence of this model needs at least {shortest} tokens (its special tokens and one more)")

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
