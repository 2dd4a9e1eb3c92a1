"""Qwen3-Reranker parity: the engine's scorer against the model card's
transformers recipe, written out below as published (left-padded tokenizer,
prefix/suffix prompt, `longest_first` truncation of the body, P(yes) from the
last position's yes/no logits), on the same tiny float32 weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rerank_engine.scoring import Pair
from tests.engine.samples import LONG, PANDA, PANDA_ZH, PARIS

# From the Qwen3-Reranker model card, not from the engine.
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# Published ids of the suffix and the ends of the 39-id prefix (shared/data/tokenizers/qwen3/PROVENANCE.md).
SUFFIX_IDS = [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
PREFIX_HEAD, PREFIX_TAIL = [151644, 8948, 198, 60256], [151645, 198, 151644, 872, 198]

# The recipe passes max_length to tokenizer.pad, which transformers ignores (with a warning) under padding=True.
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`")


def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = "Given a web search query, retrieve relevant passages that answer the query"
    output = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(  # noqa: UP032 (as published)
        instruction=instruction, query=query, doc=doc
    )
    return output


class Recipe:
    """The model card's `process_inputs` and `compute_logits` around one model."""

    def __init__(self, folder, max_length: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)

    def input_ids(self, pairs: list[Pair]) -> list[list[int]]:
        texts = [format_instruction(p.instruction, p.query, p.document) for p in pairs]
        inputs = self.tokenizer(
            texts,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        return [self.prefix_tokens + ele + self.suffix_tokens for ele in inputs["input_ids"]]

    @torch.no_grad()
    def log_probs(self, pairs: list[Pair]) -> np.ndarray:
        """log [P(no), P(yes)] per pair, the whole list as one left-padded batch."""
        inputs = self.tokenizer.pad(
            {"input_ids": self.input_ids(pairs)}, padding=True, return_tensors="pt", max_length=self.max_length
        )
        # logits_to_keep=1 computes only the last position's logits, the only
        # ones the recipe reads; the full [batch, length, 151669] tensor would
        # take gigabytes for the long pairs.
        batch_scores = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        return torch.nn.functional.log_softmax(batch_scores, dim=1).numpy()

    def scores(self, pairs: list[Pair]) -> np.ndarray:
        return np.exp(self.log_probs(pairs)[:, 1])


@pytest.fixture(scope="module")
def short_qwen(make_scorer, qwen_dir):
    return make_scorer("qwen3_reranker", qwen_dir, max_length=128)


# Documents chosen for how they start: the engine tokenizes " " + document on
# its own, which must give the same ids as the recipe's one-piece body.
DOCUMENT_STARTS = [
    "The capital of China is Beijing.",
    "12345 67890 are digits",
    "!!! what? ... (yes)",
    "'s a contraction at the start",
    "  \n\n  indented text\n",
    "\nstarts with a newline",
    "\tand a tab",
    "trailing spaces   ",
    "",
    " ",
    PANDA_ZH,
    "🐼🎋 panda food",
    "👨‍👩‍👧 family emoji",
    "e\u0301 combining accent",
    "a literal <|im_end|> special token",
    "Ünïcödé wörds",
]

PAIRS = [
    *[Pair("what is this text about?", doc) for doc in DOCUMENT_STARTS],
    Pair("Explain gravity", "Gravity is a force that attracts two bodies towards each other.", "Find physics texts"),
    Pair("今天天气如何？", "今天晴天适合外出游玩", "判断文档是否回答了天气问题"),
    Pair("capital of France", LONG),
    Pair("panda", PANDA * 6, "Given a question, find the passage that answers it"),
]


def test_the_recipe_prompt_has_the_published_ids(recipe):
    assert recipe.suffix_tokens == SUFFIX_IDS
    assert len(recipe.prefix_tokens) == 39
    assert recipe.prefix_tokens[:4] == PREFIX_HEAD and recipe.prefix_tokens[-5:] == PREFIX_TAIL
    assert (recipe.token_false_id, recipe.token_true_id) == (2152, 9693)


def test_ids_equal_the_recipe_for_every_kind_of_document_start(qwen, recipe):
    ours = qwen.encode(PAIRS).sequences
    expected = recipe.input_ids(PAIRS)
    for pair, got, want in zip(PAIRS, ours, expected):
        assert got == want, repr(pair.document[:20])


def test_scores_equal_the_recipe_in_one_mixed_batch(qwen, recipe):
    ours = qwen.score(PAIRS)
    log_probs = recipe.log_probs(PAIRS)
    np.testing.assert_allclose(ours.score, np.exp(log_probs[:, 1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.raw_score, log_probs[:, 1] - log_probs[:, 0], rtol=0, atol=1e-4)
    assert np.ptp(ours.score) > 0.1, "the tiny model must tell pairs apart for parity to mean anything"
    assert not ours.truncated.any()
    assert ours.num_tokens.tolist() == [len(ids) for ids in recipe.input_ids(PAIRS)]


def test_instruction_changes_the_score_as_in_the_recipe(qwen, recipe):
    pairs = [
        Pair("Explain gravity", "Gravity pulls.", instruction)
        for instruction in (
            None,
            "Given a web search query, retrieve relevant passages that answer the query",
            "Find poems",
        )
    ]
    ours = qwen.score(pairs).score
    np.testing.assert_allclose(ours, recipe.scores(pairs), rtol=0, atol=1e-5)
    assert ours[0] == ours[1], "no instruction means the model card's default one"
    assert abs(ours[2] - ours[0]) > 1e-4


def test_truncation_at_a_small_max_length_equals_the_recipe(short_qwen, short_recipe, recipe):
    pairs = [*PAIRS[-4:], Pair("q", PARIS * 4), Pair("q", "short")]
    encoded = short_qwen.encode(pairs)
    expected = short_recipe.input_ids(pairs)
    assert encoded.sequences == expected
    uncut = [len(ids) for ids in recipe.input_ids(pairs)]
    assert encoded.truncated.tolist() == [n > 128 for n in uncut]
    assert encoded.truncated.sum() >= 3, "the case must cut several pairs"
    assert encoded.input_tokens.tolist() == uncut
    for ids in encoded.sequences:
        assert len(ids) <= 128
        assert ids[:39] == short_recipe.prefix_tokens
        assert ids[-9:] == SUFFIX_IDS
    np.testing.assert_allclose(short_qwen.score(pairs).score, short_recipe.scores(pairs), rtol=0, atol=1e-5)


def test_an_overlong_query_is_cut_and_the_prompt_stays_whole(short_qwen, short_recipe):
    for instruction in (None, "Find passages about French cities"):
        pair = Pair(LONG, "the document", instruction)
        scores = short_qwen.score([pair])
        ids = short_qwen.encode([pair]).sequences[0]
        assert scores.num_tokens[0] == len(ids) == 128
        assert scores.truncated[0]
        assert scores.input_tokens[0] > 1000
        assert 0.0 <= scores.score[0] <= 1.0
        assert ids[:39] == short_recipe.prefix_tokens and ids[-9:] == SUFFIX_IDS
        # The body still ends with the document label, so the model sees a complete prompt.
        document_label = short_recipe.tokenizer.encode("\n<Document>:", add_special_tokens=False)
        assert ids[-9 - len(document_label) : -9] == document_label
        head = short_recipe.tokenizer.encode(
            format_instruction(instruction, "", "").split("\n<Query>:")[0] + "\n<Query>:", add_special_tokens=False
        )
        assert ids[39 : 39 + len(head)] == head


def test_a_cut_query_keeps_the_tokens_it_has_in_the_whole_prompt(short_qwen, short_recipe):
    # What is left of a cut query should be the start of the query exactly as
    # the model sees it uncut, e.g. ["<Query>:", " Paris", " is", ...], not a
    # re-tokenization with the separating space as a token of its own
    # (rerank_engine/qwen3.py `_truncated_head` tokenizes "...<Query>: " apart from the query).
    pair = Pair(LONG, "the document")
    ids = short_qwen.encode([pair]).sequences[0]
    document_label = short_recipe.tokenizer.encode("\n<Document>:", add_special_tokens=False)
    body = ids[39 : -9 - len(document_label)]
    whole_head = short_recipe.tokenizer.encode(format_instruction(None, LONG, ""), add_special_tokens=False)
    got = short_recipe.tokenizer.convert_ids_to_tokens(body)
    want = short_recipe.tokenizer.convert_ids_to_tokens(whole_head[: len(body)])
    first_difference = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
    assert first_difference is None, (
        f"cut query re-tokenized: got {got[first_difference - 2 : first_difference + 3]}, "
        f"whole prompt has {want[first_difference - 2 : first_difference + 3]}"
    )


def test_an_instruction_longer_than_the_budget_is_refused(short_qwen):
    with pytest.raises(ValueError, match="instruction alone is longer"):
        short_qwen.encode([Pair("q", "d", "an instruction that never ends " * 40)])


def test_a_max_length_without_room_for_the_prompt_is_refused(make_scorer, qwen_dir):
    with pytest.raises(ValueError, match="no room for the Qwen3 prompt"):
        make_scorer("qwen3_reranker", qwen_dir, max_length=48)
