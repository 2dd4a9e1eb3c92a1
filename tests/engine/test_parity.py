"""Cross-scorer checks of the per-request document cap: the capped pair's ids,
and `input_tokens` reporting the uncut pair (see also test_document_cap.py)."""

from __future__ import annotations

from transformers import AutoTokenizer

from rerank_engine.scoring import Pair


def test_document_cap_and_uncut_length(bge, bge_dir, qwen, minilm):
    tokenizer = AutoTokenizer.from_pretrained(bge_dir)
    pair = Pair("what is a panda?", "The giant panda is a bear species endemic to China.", max_document_tokens=4)
    doc = tokenizer(pair.document, add_special_tokens=False)["input_ids"]
    query = tokenizer(pair.query, add_special_tokens=False)["input_ids"]
    encoded = bge.encode([pair, pair._replace(max_document_tokens=None)])
    assert encoded.sequences[0] == [0, *query, 2, 2, *doc[:4], 2]
    assert encoded.input_tokens.tolist() == [len(query) + len(doc) + 4] * 2  # both report the uncut pair
    assert encoded.truncated.tolist() == [True, False]
    for scorer in (qwen, minilm):
        capped, whole = scorer.encode([pair, pair._replace(max_document_tokens=None)]).num_tokens
        assert (
            whole - capped
            == len(scorer.tokenizer.encode(" " * (scorer is qwen) + pair.document, add_special_tokens=False).ids) - 4
        )
