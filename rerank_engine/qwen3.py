"""Qwen3-Reranker scorer: the official prompt recipe, scored as P(yes).

The model card builds `prefix + body + suffix` and reads the `yes`/`no` logits
of the last position. Here the body is tokenized as a shared head (instruction
and query, once per request) plus the document, so that when a pair is too long
only the body is cut - document first, then the query - and the system prefix
and the assistant suffix always stay whole. Only the two `lm_head` rows for
`no` and `yes` are applied, to the last token, never the full vocabulary.

With prefix reuse on, the system prefix and head - the same for every document
of a query - run once per query (`rerank_engine.prefix_cache`), and each pair
runs only its document and suffix against their cached keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from rerank_engine.batching import plan_micro_batches
from rerank_engine.packing import KEYS_PER_TOKEN
from rerank_engine.prefix_cache import SharedPrefix, group_by_head, worth_reusing
from rerank_engine.qwen3_prompt import ASSISTANT_SUFFIX, DEFAULT_INSTRUCTION, SYSTEM_PREFIX, format_body
from rerank_engine.pairs import Pair, RunStats
from rerank_engine.scoring import Encoded, Scorer
from rerank_engine.tokens import keep, raw_tokenizer, token_ids


@dataclass
class PromptEncoded(Encoded):
    head_lengths: list[int] = field(default_factory=list)  # per sequence, prefix + head ids (after any cut)


class Qwen3RerankerScorer(Scorer):
    def __init__(self, model, tokenizer, *, prefix_reuse: bool = True, **kwargs) -> None:
        self.model = model
        self.prefix_reuse = prefix_reuse
        self.tokenizer = raw_tokenizer(tokenizer)
        self.prefix = self.tokenizer.encode(SYSTEM_PREFIX, add_special_tokens=False).ids
        self.suffix = self.tokenizer.encode(ASSISTANT_SUFFIX, add_special_tokens=False).ids
        no_id, yes_id = tokenizer.convert_tokens_to_ids(["no", "yes"])
        # Row 0 = "no", row 1 = "yes", so softmax(...)[1] is P(yes).
        self.answer_rows = model.get_output_embeddings().weight[[no_id, yes_id]].detach().float()
        super().__init__(pad_id=tokenizer.pad_token_id, **kwargs)
        if self.max_length <= len(self.prefix) + len(self.suffix):
            raise ValueError(f"max_length {self.max_length} leaves no room for the Qwen3 prompt")

    def encode(self, pairs: Sequence[Pair], documents: Sequence[list[int]] | None = None) -> Encoded:
        heads = self._heads(pairs)
        docs = self.document_ids(pairs) if documents is None else documents
        template = len(self.prefix) + len(self.suffix)
        sequences, uncut, head_lengths = [], [], []
        for pair, doc in zip(pairs, docs):
            budget = self.limit(pair) - template
            key = (pair.instruction or DEFAULT_INSTRUCTION, pair.query)
            head, doc_ids = heads[key], self.capped(doc, pair)
            uncut.append(template + len(head) + len(doc))
            if len(head) + len(doc_ids) > budget:
                if len(head) > budget:
                    head = self._truncated_head(*key, budget, pair.keep_end)
                doc_ids = keep(doc_ids, budget - len(head), pair.keep_end)
            sequences.append(self.prefix + head + doc_ids + self.suffix)
            head_lengths.append(len(self.prefix) + len(head))
        return PromptEncoded(sequences, *self.counts(sequences, uncut), head_lengths=head_lengths)

    def document_text(self, document: str) -> str:
        # Splitting the body just before " {document}" is a pre-tokenizer boundary
        # (":" then a space), so head ids + document ids equal the ids of the body.
        return " " + document

    def _heads(self, pairs: Sequence[Pair]) -> dict[tuple[str, str], list[int]]:
        keys = list(dict.fromkeys((p.instruction or DEFAULT_INSTRUCTION, p.query) for p in pairs))
        return dict(zip(keys, token_ids(self.tokenizer, [format_body(i, q, "")[:-1] for i, q in keys])))

    def document_room(self, pairs: Sequence[Pair]) -> list[int]:
        # The document is cut before the query: it has what the head leaves (at least one token).
        heads = self._heads(pairs)
        template = len(self.prefix) + len(self.suffix)
        return [max(self.window_limit(p) - template - len(heads[(p.instruction or DEFAULT_INSTRUCTION, p.query)]), 1)
                for p in pairs]

    def check(self, pairs: Sequence[Pair]) -> None:
        template = len(self.prefix) + len(self.suffix)
        for instruction in dict.fromkeys(p.instruction or DEFAULT_INSTRUCTION for p in pairs):
            before, after = self._head_parts(instruction)
            shortest = template + len(before) + len(after) + 1
            if any(self.limit(p) < shortest for p in pairs if (p.instruction or DEFAULT_INSTRUCTION) == instruction):
                raise ValueError(f"the Qwen3 prompt with this instruction needs at least {shortest} tokens")

    def _head_parts(self, instruction: str) -> tuple[list[int], list[int]]:
        """The head's ids before and after the query."""
        before, after = format_body(instruction, "\0", "")[:-1].split("\0")
        # Split before the space, as for documents: " Paris" is one token in the whole prompt.
        before_ids, after_ids = token_ids(self.tokenizer, [before[:-1], after])
        return before_ids, after_ids

    def _truncated_head(self, instruction: str, query: str, budget: int, keep_end: bool = False) -> list[int]:
        """A head whose query is cut so the head alone fills the body budget."""
        before_ids, after_ids = self._head_parts(instruction)
        (query_ids,) = token_ids(self.tokenizer, [" " + query])
        head = before_ids + keep(query_ids, budget - len(before_ids) - len(after_ids), keep_end) + after_ids
        if len(head) > budget:
            raise ValueError(f"the instruction alone is longer than the {budget}-token body budget")
        return head

    @classmethod
    def packable(cls, model) -> bool:
        return model.config.model_type == "qwen3" and not getattr(model.config, "use_sliding_window", False)

    def packed_forward(self):
        from rerank_engine.packed import PackedQwen3

        if not self.packable(self.model):
            raise ValueError(f"no packed forward for {self.model.config.model_type} models")
        decoder = PackedQwen3(self.model.model)
        return lambda batch: self._yes_no(decoder(batch))

    @torch.inference_mode()
    def infer(self, encoded: PromptEncoded) -> tuple[torch.Tensor, RunStats]:
        sequences = encoded.sequences
        if not self.prefix_reuse:
            return self.run(sequences)
        if self.packed is not None:
            return self.infer_packed(sequences, encoded.head_lengths)
        order: list[int] = []
        outputs: list[torch.Tensor] = []
        whole: list[int] = []
        run = RunStats()
        for head, members in group_by_head(sequences, encoded.head_lengths).items():
            if not worth_reusing(head, members):
                whole.extend(members)
                continue
            prefix = SharedPrefix(self.model.model, self._to_device(torch.tensor([head])))
            run = run.plus(prefix.length, prefix.length)
            tails = [sequences[i][len(head) :] for i in members]
            # A row attends over prefix + tail keys (and the cache holds them all),
            # so it is budgeted at that length, as the whole sequence would be.
            widths = [prefix.length + len(tail) for tail in tails]
            for batch in plan_micro_batches(widths, self.max_batch_tokens, self.max_batch_size):
                input_ids, attention_mask, lengths = self._pad([tails[j] for j in batch])
                run = run.plus(sum(len(tails[j]) for j in batch), input_ids.numel())
                outputs.append(self._answer(prefix.run_tails(input_ids, attention_mask), lengths))
                order.extend(members[j] for j in batch)
        if whole:
            rest, rest_run = self.run([sequences[i] for i in whole])
            outputs.append(rest)
            order.extend(whole)
            run += rest_run
        return self.gather(outputs, order), run

    def infer_packed(self, sequences: list[list[int]], head_lengths: list[int]) -> tuple[torch.Tensor, RunStats]:
        """Each query's head once per packed chunk, its documents' tails attending to it.

        Unlike the padded path this needs no minimum group size: the head is
        part of the same forward pass, not a pass of its own.
        """
        heads: list[tuple[int, ...]] = []
        rows, order = [], []
        for head, members in group_by_head(sequences, head_lengths).items():
            heads.append(head)
            rows.extend((len(heads) - 1, sequences[i][len(head) :]) for i in members)
            order.extend(members)
        outputs, run = self.run_packed(heads, rows)
        return outputs[torch.argsort(torch.tensor(order))], run

    def heaviest_batches(self) -> None:
        super().heaviest_batches()
        if self.packed is not None and self.prefix_reuse:
            # A long query's head, gathered for as many short documents as the key budget allows.
            head, tail = [self.pad_id] * (self.max_length // 2), [self.pad_id] * 16
            count = max(1, KEYS_PER_TOKEN * self.max_batch_tokens // (len(head) + len(tail)))
            self.run_packed([head], [(0, tail)] * count)

    def forward(self, input_ids, attention_mask, lengths) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self._answer(hidden, lengths)

    def _answer(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[no, yes] logits (float32) at each row's last real token."""
        return self._yes_no(hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1])

    def _yes_no(self, last: torch.Tensor) -> torch.Tensor:
        """[no, yes] logits (float32) from last-token hidden states; `answer_rows` lives on the model's device."""
        return last.float() @ self.answer_rows.T

    def finalize(self, encoded, outputs) -> tuple[np.ndarray, np.ndarray]:
        log_odds = outputs[:, 1] - outputs[:, 0]
        return torch.softmax(outputs, dim=1)[:, 1].numpy(), log_odds.numpy()
