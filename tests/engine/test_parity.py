"""Scores equal the reference implementations written from the model cards:
sentence-transformers `CrossEncoder` for bge, the Qwen3-Reranker recipe for
Qwen3, and `SentenceTransformer` cosine for all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rerank_engine.qwen3 import ASSISTANT_SUFFIX, DEFAULT_INSTRUCTION, SYSTEM_PREFIX
from rerank_engine.scoring import Pair
from tests.engine.conftest import scorer_for

LONG = "Paris is the capital and most populous city of France, on the Seine. " * 60
PAIRS = [
    Pair("what is a panda?", "The giant panda is a bear species endemic to China."),
    Pair("what is a panda?", "hi"),
    Pair("今天天气如何？", "今天晴天适合外出游玩"),
    Pair("emoji 🐼🎋 query", "A 🐼 eats 🎋 all day, every day."),
    Pair("capital of France", LONG),  # document longer than the limit
    Pair(LONG, "short document"),  # query longer than the limit
    Pair(LONG, LONG),  # both longer than half the limit
]


def test_bge_equals_sentence_transformers_cross_encoder(bge, bge_dir):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(bge_dir), max_length=512, device="cpu")
    expected = reference.predict([(p.query, p.document) for p in PAIRS], batch_size=3)
    ours = bge.score(PAIRS)
    np.testing.assert_allclose(ours.score, expected, atol=1e-6)
    np.testing.assert_allclose(ours.raw_score, np.log(expected / (1 - expected)), atol=1e-4)  # sigmoid inverse
    assert np.ptp(ours.score) > 0.05, "tiny model must tell pairs apart for the comparison to mean anything"


def test_bge_token_counts_and_truncation_flags(bge, bge_dir):
    tokenizer = AutoTokenizer.from_pretrained(bge_dir)
    ours = bge.score(PAIRS)
    for pair, tokens, truncated in zip(PAIRS, ours.num_tokens, ours.truncated):
        reference = tokenizer(pair.query, pair.document, truncation=True, max_length=512)["input_ids"]
        full = tokenizer(pair.query, pair.document)["input_ids"]
        assert tokens == len(reference)
        assert truncated == (len(full) > 512)
    assert ours.truncated.tolist() == [False, False, False, False, True, True, True]


def test_bge_pair_ids_equal_the_tokenizers_truncation(bge, bge_dir):
    tokenizer = AutoTokenizer.from_pretrained(bge_dir)
    encoded = bge.encode(PAIRS)
    for pair, ids in zip(PAIRS, encoded.sequences):
        assert ids == tokenizer(pair.query, pair.document, truncation="longest_first", max_length=512)["input_ids"]


class Qwen3Recipe:
    """The Qwen3-Reranker model card's transformers recipe, as published."""

    def __init__(self, folder, max_length: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(SYSTEM_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(ASSISTANT_SUFFIX, add_special_tokens=False)

    @staticmethod
    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
            instruction=instruction, query=query, doc=doc
        )

    def input_ids(self, pairs: list[Pair]) -> list[list[int]]:
        texts = [self.format_instruction(p.instruction, p.query, p.document) for p in pairs]
        inputs = self.tokenizer(
            texts, padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        return [self.prefix_tokens + ids + self.suffix_tokens for ids in inputs["input_ids"]]

    @torch.no_grad()
    def scores(self, pairs: list[Pair]) -> np.ndarray:
        inputs = self.tokenizer.pad({"input_ids": self.input_ids(pairs)}, padding=True, return_tensors="pt")
        batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().numpy()


QWEN_PAIRS = [
    Pair("What is the capital of China?", "The capital of China is Beijing."),
    Pair("Explain gravity", "Gravity is a force that attracts two bodies towards each other.", "Find physics texts"),
    Pair("今天天气如何？", "今天晴天适合外出游玩"),
    Pair("numbers", "12345 67890 are digits"),
    Pair("punctuation", "!!! what? ... (yes)"),
    Pair("whitespace", "  \n\n  indented text\n"),
    Pair("empty document", ""),
    Pair("emoji", "🐼🎋 panda food"),
    Pair("long", LONG),
]


def test_qwen3_ids_equal_the_recipe(qwen, qwen_dir):
    recipe = Qwen3Recipe(qwen_dir, max_length=8192)
    assert qwen.encode(QWEN_PAIRS).sequences == recipe.input_ids(QWEN_PAIRS)


def test_qwen3_scores_equal_the_recipe(qwen, qwen_dir):
    recipe = Qwen3Recipe(qwen_dir, max_length=8192)
    ours = qwen.score(QWEN_PAIRS)
    np.testing.assert_allclose(ours.score, recipe.scores(QWEN_PAIRS), atol=2e-5)
    assert np.ptp(ours.score) > 0.05
    np.testing.assert_allclose(1 / (1 + np.exp(-ours.raw_score)), ours.score, atol=1e-6)  # raw = log-odds


def test_qwen3_truncation_equals_the_recipe_and_keeps_the_template(qwen_dir):
    short = scorer_for("qwen3_reranker", qwen_dir, max_length=128)
    recipe = Qwen3Recipe(qwen_dir, max_length=128)
    encoded = short.encode(QWEN_PAIRS)
    assert encoded.sequences == recipe.input_ids(QWEN_PAIRS)
    for ids in encoded.sequences:
        assert len(ids) <= 128
        assert ids[: len(recipe.prefix_tokens)] == recipe.prefix_tokens
        assert ids[-len(recipe.suffix_tokens):] == recipe.suffix_tokens
    assert encoded.truncated.tolist() == [False] * 8 + [True]
    np.testing.assert_allclose(short.score(QWEN_PAIRS).score, recipe.scores(QWEN_PAIRS), atol=2e-5)


def test_qwen3_default_instruction_is_the_model_cards():
    assert DEFAULT_INSTRUCTION == "Given a web search query, retrieve relevant passages that answer the query"


def test_qwen3_overlong_query_is_cut_but_the_template_stays(qwen_dir):
    short = scorer_for("qwen3_reranker", qwen_dir, max_length=128)
    recipe = Qwen3Recipe(qwen_dir, max_length=128)
    pair = Pair(LONG, "the document")
    encoded = short.encode([pair])
    ids = encoded.sequences[0]
    assert len(ids) == 128 and encoded.num_tokens[0] == 128 and encoded.truncated[0]
    assert ids[: len(recipe.prefix_tokens)] == recipe.prefix_tokens
    assert ids[-len(recipe.suffix_tokens):] == recipe.suffix_tokens
    text = recipe.tokenizer.decode(ids)
    assert f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: Paris is the capital" in text
    assert "\n<Document>:" in text  # the query was cut, not the template around it


def test_minilm_equals_sentence_transformers_cosine(minilm, minilm_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    pairs = PAIRS[:5]
    queries = model.encode([p.query for p in pairs], normalize_embeddings=True)
    documents = model.encode([p.document for p in pairs], normalize_embeddings=True)
    expected = (queries * documents).sum(axis=1)
    ours = minilm.score(pairs)
    np.testing.assert_allclose(ours.score, expected, atol=1e-5)
    assert ours.truncated.tolist() == [False, False, False, False, True]  # LONG is over 256 tokens


@pytest.mark.parametrize("name", ["bge", "qwen", "minilm"])
def test_scores_do_not_depend_on_batch_company(request, name, bge_dir, qwen_dir, minilm_dir):
    folders = {"bge": ("cross_encoder", bge_dir, 512), "qwen": ("qwen3_reranker", qwen_dir, 8192),
               "minilm": ("bi_encoder", minilm_dir, 256)}
    kind, folder, max_length = folders[name]
    # A budget this small forces many micro-batches of different widths.
    scorer = scorer_for(kind, folder, max_length=max_length, max_batch_tokens=max_length, max_batch_size=3)
    together = scorer.score(PAIRS).score
    alone = np.array([scorer.score([p]).score[0] for p in PAIRS])
    reversed_order = scorer.score(PAIRS[::-1]).score[::-1]
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(reversed_order, alone, atol=1e-5)
