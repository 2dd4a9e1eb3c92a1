"""Unit tests of the engine's building blocks: truncation lengths, special-token
templates, micro-batch planning, request decoding, config and weights lookup."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from rerank_engine.batching import plan_micro_batches
from rerank_engine.engine import EngineConfig
from rerank_engine.inputs import InvalidRequest, decode_pairs
from rerank_engine.tokens import SpecialTokenTemplate, longest_first_lengths, raw_tokenizer
from rerank_engine.weights import WeightsNotFoundError, require_weights, resolve_weights_path
from tests.tiny_models import TOKENIZERS_DIR, minilm_source


@pytest.fixture(scope="module")
def xlmr():
    return AutoTokenizer.from_pretrained(TOKENIZERS_DIR / "xlm-roberta")


def test_longest_first_lengths_match_the_tokenizers_rule(xlmr):
    for words_a, words_b, budget in itertools.product((1, 3, 7, 12), (1, 4, 9, 15), (4, 7, 10, 16, 40)):
        first, second = " ".join(["hello"] * words_a), " ".join(["world"] * words_b)
        ids_a = xlmr(first, add_special_tokens=False)["input_ids"]
        ids_b = xlmr(second, add_special_tokens=False)["input_ids"]
        kept_a, kept_b = longest_first_lengths(len(ids_a), len(ids_b), budget)
        reference = xlmr(first, second, truncation="longest_first", max_length=budget + 4)["input_ids"]
        assert reference == [0, *ids_a[:kept_a], 2, 2, *ids_b[:kept_b], 2]  # <s> A </s></s> B </s>


def test_pair_template_matches_xlmr_post_processing(xlmr):
    template = SpecialTokenTemplate.from_tokenizer(raw_tokenizer(xlmr), pair=True)
    a = xlmr("query text", add_special_tokens=False)["input_ids"]
    b = xlmr("a document", add_special_tokens=False)["input_ids"]
    assert template.build(a, b) == xlmr("query text", "a document")["input_ids"]
    assert template.num_special == 4


def test_single_template_matches_bert_post_processing():
    bert = AutoTokenizer.from_pretrained(minilm_source())
    template = SpecialTokenTemplate.from_tokenizer(raw_tokenizer(bert), pair=False)
    ids = bert("Hello World", add_special_tokens=False)["input_ids"]
    assert template.build(ids) == bert("Hello World")["input_ids"] == [101, *ids, 102]


def test_raw_tokenizer_drops_the_files_fixed_padding():
    bert = AutoTokenizer.from_pretrained(minilm_source())
    assert len(raw_tokenizer(bert).encode("hi").ids) == 3  # the tokenizer.json pads to 128


@pytest.mark.parametrize("seed", range(5))
def test_micro_batches_cover_everything_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 600, size=200).tolist()
    groups = plan_micro_batches(lengths, max_batch_tokens=2048, max_batch_size=16)
    assert sorted(i for g in groups for i in g) == list(range(200))
    for group in groups:
        width = max(lengths[i] for i in group)
        assert len(group) <= 16
        assert len(group) * width <= 2048 or len(group) == 1
        assert lengths[group[0]] == width  # longest first: the first item fixes the padded width


def test_an_item_over_the_budget_gets_a_batch_of_its_own():
    assert plan_micro_batches([10, 5000, 10], max_batch_tokens=100, max_batch_size=8) == [[1], [0, 2]]


def _strings(*values):
    return np.array([[v] for v in values], dtype=np.object_)


def test_decode_pairs_reads_rows_and_instructions():
    pairs = decode_pairs(_strings(b"q", b"q"), _strings("一".encode(), b"d2"), _strings(b"find", b""))
    assert [(p.query, p.document, p.instruction) for p in pairs] == [("q", "一", "find"), ("q", "d2", None)]


@pytest.mark.parametrize(
    ("query", "document", "instruction", "message"),
    [
        (_strings(b"q", b"q"), _strings(b"a", b"b", b"c"), None, "input 'query' has 2 rows; expected 3"),
        (_strings(b"q", b"q"), _strings(b"a", b"\xff\xfe"), None, "input 'document' row 1 is not valid UTF-8"),
        (None, _strings(b"a"), None, "input 'query' is required"),
        (_strings(b"q"), None, None, "input 'document' is required"),
        (_strings(b"q", b"q"), _strings(b"a", b"b"), _strings(b"x", b"y", b"z"), "input 'instruction' has 3 rows"),
    ],
)
def test_decode_pairs_names_the_bad_input(query, document, instruction, message):
    with pytest.raises(InvalidRequest, match=message):
        decode_pairs(query, document, instruction)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weights_path": "models/x"}, "'scorer' is required"),
        ({"scorer": "magic", "weights_path": "models/x"}, "unknown scorer 'magic'"),
        ({"scorer": "cross_encoder"}, "'weights_path' is required"),
        ({"scorer": "cross_encoder", "weights_path": "m", "dtype": "int4"}, "dtype 'int4'"),
        ({"scorer": "cross_encoder", "weights_path": "m", "max_length": "-5"}, "'max_length' must be a positive"),
        ({"scorer": "cross_encoder", "weights_path": "m", "max_length": "lots"}, "'max_length' must be a positive"),
    ],
)
def test_engine_config_validation(params, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_parameters(params)


def test_engine_config_dtypes():
    config = EngineConfig.from_parameters({"scorer": "qwen3_reranker", "weights_path": "m", "max_length": "64"})
    assert config.torch_dtype(torch.device("cpu")) == torch.float32
    assert config.torch_dtype(torch.device("cuda", 0)) == torch.bfloat16
    encoder = EngineConfig.from_parameters({"scorer": "cross_encoder", "weights_path": "m"})
    assert encoder.torch_dtype(torch.device("cuda", 0)) == torch.float16
    assert config.max_batch_tokens >= config.max_length


def test_models_paths_resolve_inside_the_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RERANKER_MODELS_DIR", str(tmp_path))
    assert resolve_weights_path("models/bge-reranker-base") == tmp_path / "bge-reranker-base"
    assert str(resolve_weights_path("/abs/folder")) == "/abs/folder"


def test_missing_weights_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        require_weights(tmp_path / "nope", hint="run 'reranker weights bge'")
    assert str(tmp_path / "nope") in str(error.value) and "does not exist" in str(error.value)
    assert "run 'reranker weights bge'" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="has no config.json"):
        require_weights(tmp_path / "empty")
