"""Token-level building blocks against Hugging Face tokenizers' own behaviour:
`longest_first_lengths` against the `tokenizers` truncation it mirrors, special
token templates against the tokenizers' post-processors, `raw_tokenizer`, and the batch `token_ids`."""

from __future__ import annotations

import itertools

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer

from rerank_engine.tokens import SpecialTokenTemplate, longest_first_lengths, raw_tokenizer, token_ids
from tests import tiny_models

WORDS = 40


@pytest.fixture(scope="module")
def word_tokenizer() -> Tokenizer:
    """One token per word and no special tokens, so lengths are exactly word counts."""
    vocab = {f"w{i}": i for i in range(WORDS)}
    vocab["[UNK]"] = WORDS
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def test_longest_first_equals_tokenizers_truncation_exhaustively(word_tokenizer):
    words = [f"w{i}" for i in range(WORDS)]
    for budget in range(1, 27):
        word_tokenizer.enable_truncation(budget, strategy="longest_first")
        combos = list(itertools.product(range(15), range(15)))
        encodings = word_tokenizer.encode_batch(
            [(words[:len_a], words[20 : 20 + len_b]) for len_a, len_b in combos], is_pretokenized=True
        )
        for (len_a, len_b), encoding in zip(combos, encodings):
            kept = (encoding.sequence_ids.count(0), encoding.sequence_ids.count(1))
            assert longest_first_lengths(len_a, len_b, budget) == kept, (len_a, len_b, budget)


def test_longest_first_equals_the_xlmr_tokenizer_on_text(xlmr_tokenizer):
    for words_a, words_b, budget in itertools.product((1, 3, 7, 12, 30), (1, 4, 9, 15, 31), (4, 7, 10, 16, 25, 40)):
        first, second = " ".join(["hello"] * words_a), " ".join(["world"] * words_b)
        ids_a = xlmr_tokenizer(first, add_special_tokens=False)["input_ids"]
        ids_b = xlmr_tokenizer(second, add_special_tokens=False)["input_ids"]
        kept_a, kept_b = longest_first_lengths(len(ids_a), len(ids_b), budget)
        reference = xlmr_tokenizer(first, second, truncation="longest_first", max_length=budget + 4)["input_ids"]
        assert reference == [0, *ids_a[:kept_a], 2, 2, *ids_b[:kept_b], 2], (words_a, words_b, budget)


def test_longest_first_keeps_the_budget_and_never_grows():
    for len_a, len_b, budget in itertools.product(range(30), range(30), range(1, 40)):
        kept_a, kept_b = longest_first_lengths(len_a, len_b, budget)
        assert kept_a <= len_a and kept_b <= len_b
        assert kept_a + kept_b == min(len_a + len_b, budget)


def test_pair_template_matches_xlmr_post_processing(xlmr_tokenizer):
    template = SpecialTokenTemplate.from_tokenizer(raw_tokenizer(xlmr_tokenizer), pair=True)
    assert (template.head, template.middle, template.tail) == ((0,), (2, 2), (2,))
    assert template.num_special == 4 == xlmr_tokenizer.num_special_tokens_to_add(pair=True)
    for query, document in [("query text", "a document"), ("大熊猫", "🐼 eats bamboo"), ("x", "")]:
        a = xlmr_tokenizer(query, add_special_tokens=False)["input_ids"]
        b = xlmr_tokenizer(document, add_special_tokens=False)["input_ids"]
        # The batched call: a single call treats an empty second text as no pair at all.
        assert template.build(a, b) == xlmr_tokenizer([query], [document])["input_ids"][0]


def test_single_template_matches_bert_post_processing(bert_tokenizer):
    template = SpecialTokenTemplate.from_tokenizer(raw_tokenizer(bert_tokenizer), pair=False)
    assert template.num_special == 2 == bert_tokenizer.num_special_tokens_to_add(pair=False)
    for text in ("Hello World", "大熊猫 🐼", "a"):
        ids = bert_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert template.build(ids) == bert_tokenizer(text)["input_ids"]
        assert template.build(ids)[0] == bert_tokenizer.cls_token_id
        assert template.build(ids)[-1] == bert_tokenizer.sep_token_id


def test_raw_tokenizer_turns_off_a_files_padding_and_truncation():
    # all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128; transformers 5
    # drops that on load but 4.x keeps it, so switch it on to be sure.
    bert = AutoTokenizer.from_pretrained(tiny_models.minilm_source())
    bert.backend_tokenizer.enable_padding(length=128)
    bert.backend_tokenizer.enable_truncation(128)
    raw = raw_tokenizer(bert)
    assert raw.padding is None and raw.truncation is None
    assert len(raw.encode("hi").ids) == 3
    assert len(raw.encode("word " * 300).ids) == 302
    assert bert.backend_tokenizer.padding is not None, "the tokenizer passed in is left as it was"


def test_raw_tokenizer_tokenizes_as_the_loaded_tokenizer(xlmr_tokenizer):
    # transformers 5 rebuilds XLM-R's normalizer/pre-tokenizer on load; the raw
    # copy must follow the loaded pipeline, not the file's, e.g. on whitespace runs.
    raw = raw_tokenizer(xlmr_tokenizer)
    for text in ("  leading and  double  spaces  ", "tabs\tand\nnewlines\n\n", "zero\u200bwidth", "Ⅻ ﬁ ①"):
        assert (
            raw.encode(text, add_special_tokens=False).ids
            == xlmr_tokenizer(text, add_special_tokens=False)["input_ids"]
        )


@pytest.mark.parametrize("folder", ["xlm-roberta", "qwen3"])
def test_token_ids_equal_the_loaded_tokenizers_ids(folder):
    # token_ids skips offsets (encode_batch_fast); the ids must not change with it.
    loaded = AutoTokenizer.from_pretrained(tiny_models.TOKENIZERS_DIR / folder)
    texts = ["", " ", "Giant pandas eat bamboo.", "  double  spaces\tand\nnewlines ", "北京是中国的首都。",
             "emoji 🐼🎋 and accents: café naïve", "NUL\x00inside", "Ⅻ ﬁ ①", "word " * 600]
    expected = [loaded(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert token_ids(raw_tokenizer(loaded), texts) == expected
